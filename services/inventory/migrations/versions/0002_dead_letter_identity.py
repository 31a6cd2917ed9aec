"""Machinery step 0002: every dead letter its own identity and its stream.

Revision ID: 0002
"""

from shared.persistence.machinery_migrations import MACHINERY_0002
from shared.persistence.migrations import apply, revert

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0002)


def downgrade() -> None:
    revert(MACHINERY_0002)
