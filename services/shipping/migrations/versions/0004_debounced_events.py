"""Machinery step 0003: the durable pending state of debounced events.

Revision ID: 0004
"""

from shared.machinery_migrations import MACHINERY_0003
from shared.migrations import apply, revert

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0003)


def downgrade() -> None:
    revert(MACHINERY_0003)
