"""The order service's composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from order.api import router as api_router
from order.flow import router as flow_router
from order.handlers import router
from order.postgres import PostgresOrderUnitOfWork
from order.settings import Settings
from order.stuck import router as stuck_router
from order.stuck import watch_stuck_orders
from shared.service.runtime import ServiceDefinition
from shared.writing.storm import ChangeRateGuard

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@dataclass
class OrderService(ServiceDefinition[PostgresOrderUnitOfWork]):
    """The order service: the machinery's parts, and the storm guard of its address route
    (one per process: its counts are what this instance received)."""

    address_changes: ChangeRateGuard = field(kw_only=True)


def bootstrap(settings: Settings | None = None) -> OrderService:
    settings = settings or Settings()
    return OrderService(
        settings=settings,
        title="Order service",
        description="Places orders and follows them to SHIPPED, REJECTED or CANCELLED.",
        router=router,  # type: ignore[arg-type]
        new_uow=PostgresOrderUnitOfWork,
        migrations=MIGRATIONS,
        api_routers=[api_router, flow_router, stuck_router],
        workers={"stuck-orders": watch_stuck_orders},
        address_changes=ChangeRateGuard(
            settings.service_name,
            "order",
            "shipping_address",
            window_seconds=settings.address_change_rate_window_seconds,
            warn_per_second=settings.address_change_storm_rate,
            limit_per_second=settings.address_change_rate_limit,
            max_aggregates=settings.address_change_rate_tracked_orders,
        ),
    )
