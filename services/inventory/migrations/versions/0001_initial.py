"""Stock, reservations and the event machinery tables.

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
        CREATE TABLE stock (
            sku        text PRIMARY KEY,
            available  integer NOT NULL CHECK (available >= 0),
            reserved   integer NOT NULL CHECK (reserved >= 0),
            shipped    integer NOT NULL CHECK (shipped >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE reservations (
            order_id   uuid PRIMARY KEY,
            items      jsonb NOT NULL,
            status     text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS reservations, stock")
    op.execute(DROP_SQL)
