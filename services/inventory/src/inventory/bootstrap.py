"""The inventory service's composition root."""

from __future__ import annotations

from pathlib import Path

from inventory.api import router as api_router
from inventory.handlers import router
from inventory.postgres import PostgresInventoryUnitOfWork
from inventory.settings import Settings
from shared.service.runtime import ServiceDefinition

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def bootstrap(settings: Settings | None = None) -> ServiceDefinition[PostgresInventoryUnitOfWork]:
    return ServiceDefinition(
        settings=settings or Settings(),
        title="Inventory service",
        description="Owns stock per SKU; reserves, releases and ships it as orders move.",
        router=router,  # type: ignore[arg-type]
        new_uow=PostgresInventoryUnitOfWork,
        migrations=MIGRATIONS,
        api_routers=[api_router],
    )
