"""Machinery step 0006: how many events each consumer stream has parked, on the stream's
row, so the statement that locks the stream also says whether events wait behind it.

Revision ID: 0007
"""

from shared.persistence.machinery_migrations import MACHINERY_0006
from shared.persistence.migrations import apply, revert

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0006)


def downgrade() -> None:
    revert(MACHINERY_0006)
