"""Stock, reservations and the event machinery tables.

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
    execute_script("DROP TABLE IF EXISTS reservations, stock")
    revert(MACHINERY_0001)
