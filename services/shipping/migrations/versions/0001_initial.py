"""Shipments and the event machinery tables.

Revision ID: 0001
"""

from shared.migrations import execute_script
from shared.schema import CREATE_SQL, DROP_SQL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(CREATE_SQL)
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
    execute_script(DROP_SQL)
