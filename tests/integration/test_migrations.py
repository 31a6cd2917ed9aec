"""Every service's migrations apply to an empty database and roll back cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from inventory.bootstrap import MIGRATIONS as INVENTORY
from order.bootstrap import MIGRATIONS as ORDER
from shared.testing.infra import create_database, drop_database
from shipping.bootstrap import MIGRATIONS as SHIPPING


async def tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def downgrade(migrations: Path, url: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", url)
    command.downgrade(config, "base")


@pytest.mark.parametrize(
    ("migrations", "own_tables"),
    [
        (ORDER, {"orders", "known_skus"}),
        (INVENTORY, {"stock", "reservations"}),
        (SHIPPING, {"shipments"}),
    ],
    ids=["order", "inventory", "shipping"],
)
async def test_migrations_create_the_service_and_machinery_tables_and_roll_back(
    migrations: Path, own_tables: set[str]
) -> None:
    url = await create_database(migrations)
    try:
        machinery = {"outbox", "outbox_sequences", "processed_events", "consumer_sequences",
                     "parked_events", "dead_letters"}  # fmt: skip
        assert await tables(url) >= own_tables | machinery
        await asyncio.to_thread(downgrade, migrations, url)
        assert await tables(url) == {"alembic_version"}
    finally:
        await drop_database(url)
