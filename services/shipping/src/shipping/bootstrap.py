"""The shipping service's composition root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from shared.service.runtime import Runtime, ServiceDefinition
from shipping.api import router as api_router
from shipping.dispatcher import DispatchAlarm, run_dispatcher
from shipping.handlers import ShippingDeps, router_for
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def bootstrap(settings: Settings | None = None) -> ServiceDefinition[PostgresShippingUnitOfWork]:
    settings = settings or Settings()
    # One alarm per service: the handlers ring it, the dispatcher waits on it.
    deps = ShippingDeps(
        dispatch_delay=timedelta(seconds=settings.dispatch_delay_seconds), alarm=DispatchAlarm()
    )

    async def dispatcher(runtime: Runtime[Any]) -> None:
        await run_dispatcher(
            runtime.new_uow,
            deps.alarm,
            settings.dispatch_poll_interval_seconds,
            settings.service_name,
        )

    return ServiceDefinition(
        settings=settings,
        title="Shipping service",
        description="Schedules a shipment per confirmed order and dispatches it after a delay;"
        " decides the race between cancellation and dispatch.",
        router=router_for(deps),  # type: ignore[arg-type]
        new_uow=PostgresShippingUnitOfWork,
        migrations=MIGRATIONS,
        api_routers=[api_router],
        workers={"dispatcher": dispatcher},
    )
