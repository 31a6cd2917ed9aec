"""The shipping service's composition root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.service.runtime import Runtime, ServiceDefinition
from shipping import handlers
from shipping.api import router as api_router
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def bootstrap(settings: Settings | None = None) -> ServiceDefinition[PostgresShippingUnitOfWork]:
    settings = settings or Settings()
    handlers.DISPATCH_DELAY = timedelta(seconds=settings.dispatch_delay_seconds)

    async def dispatcher(runtime: Runtime[Any]) -> None:
        await handlers.run_dispatcher(
            runtime.new_uow, settings.dispatch_poll_interval_seconds, settings.service_name
        )

    return ServiceDefinition(
        settings=settings,
        title="Shipping service",
        description="Schedules a shipment per confirmed order and dispatches it after a delay;"
        " decides the race between cancellation and dispatch.",
        router=handlers.router,  # type: ignore[arg-type]
        new_uow=PostgresShippingUnitOfWork,
        migrations=MIGRATIONS,
        api_routers=[api_router],
        workers={"dispatcher": dispatcher},
    )
