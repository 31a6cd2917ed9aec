"""Shipments the dispatcher could not dispatch are set aside with the reason: it no longer
takes a shipment whose ``dispatch_error`` is set (null: nothing went wrong), so one bad
shipment does not hold up those due after it.

Revision ID: 0007
"""

from shared.persistence.migrations import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("ALTER TABLE shipments ADD COLUMN dispatch_error text")


def downgrade() -> None:
    execute_script("ALTER TABLE shipments DROP COLUMN dispatch_error")
