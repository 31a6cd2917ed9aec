"""Shipments keep the address they ship to: from OrderConfirmed, changed by
OrderShippingAddressChanged until dispatch. Null for rows from before (and for a shipment
cancelled before it was scheduled).

Revision ID: 0006
"""

from shared.persistence.migrations import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("ALTER TABLE shipments ADD COLUMN shipping_address jsonb")


def downgrade() -> None:
    execute_script("ALTER TABLE shipments DROP COLUMN shipping_address")
