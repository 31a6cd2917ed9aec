"""Keep the correlation id and trace context of the flow that scheduled a shipment, so the
dispatch, which happens later in a background loop, continues the same trace.

Revision ID: 0002
"""

from shared.persistence.migrations import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(
        """
        ALTER TABLE shipments ADD COLUMN correlation_id text NOT NULL DEFAULT '';
        ALTER TABLE shipments ADD COLUMN trace_headers jsonb NOT NULL DEFAULT '{}'
        """
    )


def downgrade() -> None:
    execute_script(
        "ALTER TABLE shipments DROP COLUMN trace_headers; "
        "ALTER TABLE shipments DROP COLUMN correlation_id"
    )
