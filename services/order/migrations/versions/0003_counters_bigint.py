"""The counters of the order service are 64-bit like inventory's: ``orders.version`` only
grows, and ``known_skus.available`` mirrors inventory's stock level, now up to 10^15.

Revision ID: 0003
"""

from shared.persistence.migrations import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(
        """
        ALTER TABLE orders ALTER COLUMN version TYPE bigint;
        ALTER TABLE known_skus ALTER COLUMN available TYPE bigint
        """
    )


def downgrade() -> None:
    execute_script(
        """
        ALTER TABLE known_skus ALTER COLUMN available TYPE integer;
        ALTER TABLE orders ALTER COLUMN version TYPE integer
        """
    )
