"""The order service's composition root."""

from __future__ import annotations

from pathlib import Path

from order.api import router as api_router
from order.flow import router as flow_router
from order.handlers import router
from order.postgres import PostgresOrderUnitOfWork
from order.settings import Settings
from order.stuck import router as stuck_router
from order.stuck import watch_stuck_orders
from shared.runtime import ServiceDefinition

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def bootstrap(settings: Settings | None = None) -> ServiceDefinition[PostgresOrderUnitOfWork]:
    return ServiceDefinition(
        settings=settings or Settings(),
        title="Order service",
        description="Places orders and follows them to SHIPPED, REJECTED or CANCELLED.",
        router=router,  # type: ignore[arg-type]
        new_uow=PostgresOrderUnitOfWork,
        migrations=MIGRATIONS,
        api_routers=[api_router, flow_router, stuck_router],
        workers={"stuck-orders": watch_stuck_orders},
    )
