"""Machinery step 0003: the durable pending state of debounced events.

Revision ID: 0005
"""

from shared.persistence.machinery_migrations import MACHINERY_0004
from shared.persistence.migrations import apply, revert

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0004)


def downgrade() -> None:
    revert(MACHINERY_0004)
