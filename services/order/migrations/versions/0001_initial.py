"""Orders, the SKU catalog replica and the event machinery tables.

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
        CREATE TABLE orders (
            order_id         uuid PRIMARY KEY,
            customer_id      text NOT NULL,
            status           text NOT NULL,
            items            jsonb NOT NULL,
            shipping_address jsonb NOT NULL,
            version          integer NOT NULL,
            correlation_id   text NOT NULL,
            idempotency_key  text UNIQUE,
            request_hash     text,
            created_at       timestamptz NOT NULL,
            updated_at       timestamptz NOT NULL
        );
        CREATE INDEX orders_status_created ON orders (status, created_at, order_id);
        CREATE INDEX orders_created ON orders (created_at, order_id);

        CREATE TABLE known_skus (
            sku        text PRIMARY KEY,
            available  integer NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS known_skus, orders")
    revert(MACHINERY_0001)
