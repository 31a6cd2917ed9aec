"""outbox_sequences.updated_at, for the retention of idle sequence rows.

Revision ID: sequence_retention
"""

from shared.machinery_migrations import MACHINERY_SEQUENCE_RETENTION
from shared.migrations import apply, revert

revision = "sequence_retention"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_SEQUENCE_RETENTION)


def downgrade() -> None:
    revert(MACHINERY_SEQUENCE_RETENTION)
