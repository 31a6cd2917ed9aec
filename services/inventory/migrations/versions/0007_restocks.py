"""The restocks made with an Idempotency-Key (``POST /inventory/{sku}/restock``): one row per
(SKU, key), written in the transaction of the stock change, with what the restock asked for
and the SKU's levels right after it, which is what a retry with the same key answers.

Revision ID: 0007
"""

from shared.persistence.migrations import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(
        """
        CREATE TABLE restocks (
            sku             text NOT NULL REFERENCES stock (sku),
            idempotency_key text NOT NULL,
            quantity        bigint NOT NULL CHECK (quantity > 0),
            available       bigint NOT NULL,
            reserved        bigint NOT NULL,
            shipped         bigint NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (sku, idempotency_key)
        )
        """
    )


def downgrade() -> None:
    execute_script("DROP TABLE restocks")
