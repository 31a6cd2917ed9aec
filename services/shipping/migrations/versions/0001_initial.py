"""Shipments and the event machinery tables.

Revision ID: 0001
"""

from alembic import op
from shared.schema import CREATE_SQL, DROP_SQL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CREATE_SQL)
    op.execute(
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
    op.execute("DROP TABLE IF EXISTS shipments")
    op.execute(DROP_SQL)
