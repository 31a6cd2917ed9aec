"""Shipments and the event machinery tables.

Revision ID: 0001
"""

from shared.persistence.machinery_migrations import MACHINERY_0001
from shared.persistence.migrations import apply, execute_script, revert

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply(MACHINERY_0001)
    execute_script(
        """
        CREATE TABLE shipments (
            order_id    uuid PRIMARY KEY,
            shipment_id uuid NOT NULL UNIQUE,
            status      text NOT NULL,
            dispatch_at timestamptz NOT NULL,
            created_at  timestamptz NOT NULL,
            updated_at  timestamptz NOT NULL
        );
        CREATE INDEX shipments_due ON shipments (dispatch_at) WHERE status = 'SCHEDULED';
        """
    )


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS shipments")
    revert(MACHINERY_0001)
