"""outbox_sequences.updated_at, for the retention of idle sequence rows.

Revision ID: 0004
"""

from shared.persistence.machinery_migrations import MACHINERY_0003
from shared.persistence.migrations import apply, revert

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0003)


def downgrade() -> None:
    revert(MACHINERY_0003)
