"""Machinery step 0005: the failed attempts at each record the consumer is retrying, so
the count survives a rebalance.

Revision ID: 0006
"""

from shared.persistence.machinery_migrations import MACHINERY_0005
from shared.persistence.migrations import apply, revert

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0005)


def downgrade() -> None:
    revert(MACHINERY_0005)
