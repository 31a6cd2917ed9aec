"""Stock counters are 64-bit: ``shipped`` only grows, and past 2^31 an INTEGER refused the
dispatch that would cross it (dead-lettered, the stock left reserved).

The API keeps every SKU's total (available + reserved + shipped) at most 10^15
(``inventory.domain.stock.MAX_STOCK_UNITS``), far inside BIGINT and exact as a JSON number.

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
        ALTER TABLE stock
            ALTER COLUMN available TYPE bigint,
            ALTER COLUMN reserved TYPE bigint,
            ALTER COLUMN shipped TYPE bigint
        """
    )


def downgrade() -> None:
    # Fails (integer out of range) once a counter holds more than 2^31 - 1: that data needs
    # the wider column.
    execute_script(
        """
        ALTER TABLE stock
            ALTER COLUMN available TYPE integer,
            ALTER COLUMN reserved TYPE integer,
            ALTER COLUMN shipped TYPE integer
        """
    )
