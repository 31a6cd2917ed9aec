"""Every service's Alembic chain against real PostgreSQL: from empty to head, each revision
from the one before it with data in place, each revision rolled back to exactly the schema
before it (and re-applied to exactly the same schema), down to base, and the machinery
tables identical in every service.

The revision-by-revision tests are generated from each service's revision chain, so a new
revision is covered the moment it exists. When a new revision transforms data, give the
revision before it a seed in ``SEEDS`` (rows in that revision's shape) and, if the result
needs more than "no rows lost", a check in ``CHECKS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from inventory.bootstrap import MIGRATIONS as INVENTORY
from order.bootstrap import MIGRATIONS as ORDER
from shared.testing.infra import create_database, drop_database, postgres_url, unique
from shipping.bootstrap import MIGRATIONS as SHIPPING

SERVICES: dict[str, Path] = {"order": ORDER, "inventory": INVENTORY, "shipping": SHIPPING}
OWN_TABLES: dict[str, set[str]] = {
    "order": {"orders", "known_skus"},
    "inventory": {"stock", "reservations", "restocks"},
    "shipping": {"shipments"},
}
MACHINERY = {"outbox", "outbox_sequences", "processed_events", "consumer_sequences",
             "parked_events", "dead_letters", "debounced_events", "consumer_attempts"}  # fmt: skip

Seed = Callable[[asyncpg.Connection], Awaitable[None]]


# ---- the revision chain ----------------------------------------------------------------


def alembic_config(migrations: Path, url: str = "") -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("sqlalchemy.url", url)
    return config


def chain(migrations: Path) -> list[tuple[str | None, str]]:
    """``(previous, revision)`` for every revision, base first; the chain must be linear."""
    scripts = list(ScriptDirectory.from_config(alembic_config(migrations)).walk_revisions())
    steps: list[tuple[str | None, str]] = []
    for script in reversed(scripts):
        previous = script.down_revision
        assert previous is None or isinstance(previous, str), f"branched at {script.revision}"
        steps.append((previous, script.revision))
    return steps


REVISION_STEPS = [
    pytest.param(service, previous, revision, id=f"{service}-{previous or 'base'}-{revision}")
    for service, migrations in SERVICES.items()
    for previous, revision in chain(migrations)
]


async def upgrade(service: str, url: str, revision: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(SERVICES[service], url), revision)


async def downgrade(service: str, url: str, revision: str | None) -> None:
    config = alembic_config(SERVICES[service], url)
    await asyncio.to_thread(command.downgrade, config, revision or "base")


# ---- databases and catalog -------------------------------------------------------------


@asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    name = unique("test")
    admin = await asyncpg.connect(postgres_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = postgres_url(name)
    try:
        yield url
    finally:
        await drop_database(url)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def tables(url: str) -> set[str]:
    async with connected(url) as conn:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def row_counts(url: str) -> dict[str, int]:
    async with connected(url) as conn:
        return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in await tables(url)}


# One row per schema object: (the table it belongs to, what it is). Column positions count
# live columns only, so a column dropped and added back compares equal.
CATALOG = """
WITH public_relations AS (
    SELECT c.oid, c.relname, c.relkind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relname <> 'alembic_version'
)
SELECT relname AS owner, 'relation kind ' || relkind::text AS item
FROM public_relations WHERE relkind NOT IN ('i', 'S')
UNION ALL
SELECT r.relname,
       format('column %s %s %s%s%s%s%s',
              lpad((row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum))::text, 3, '0'),
              a.attname,
              format_type(a.atttypid, a.atttypmod),
              CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
              coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
              CASE a.attidentity WHEN '' THEN '' ELSE ' identity ' || a.attidentity::text END,
              CASE a.attgenerated WHEN '' THEN '' ELSE ' generated ' || a.attgenerated::text END)
FROM public_relations r
JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE r.relkind NOT IN ('i', 'S')
UNION ALL
SELECT r.relname, 'constraint ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN public_relations r ON r.oid = con.conrelid
UNION ALL
SELECT tablename, 'index ' || indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename <> 'alembic_version'
UNION ALL
SELECT coalesce(t.relname, s.relname),
       format('sequence %s %s increment %s min %s max %s start %s cycle %s', s.relname,
              format_type(q.seqtypid, NULL), q.seqincrement, q.seqmin, q.seqmax, q.seqstart,
              q.seqcycle)
FROM pg_sequence q JOIN public_relations s ON s.oid = q.seqrelid
LEFT JOIN pg_depend dep ON dep.objid = s.oid AND dep.classid = 'pg_class'::regclass
     AND dep.refclassid = 'pg_class'::regclass AND dep.deptype IN ('a', 'i')
LEFT JOIN pg_class t ON t.oid = dep.refobjid
UNION ALL
SELECT r.relname, 'trigger ' || pg_get_triggerdef(tg.oid)
FROM pg_trigger tg JOIN public_relations r ON r.oid = tg.tgrelid WHERE NOT tg.tgisinternal
UNION ALL
SELECT '', 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
       || ') ' || md5(p.prosrc)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
"""


async def schema(url: str) -> dict[str, list[str]]:
    """Every table's columns, types, defaults, constraints, indexes, sequences and triggers
    (``alembic_version`` aside), comparable with ``==`` and readable in a failure diff."""
    async with connected(url) as conn:
        rows = await conn.fetch(CATALOG)
    result: dict[str, list[str]] = {}
    for row in rows:
        result.setdefault(row["owner"], []).append(row["item"])
    return {owner: sorted(items) for owner, items in sorted(result.items())}


# ---- data present while migrating ------------------------------------------------------


async def machinery_at_0001(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO outbox (event_id, topic, message_key, value, headers)
            VALUES (gen_random_uuid(), 'orders', 'o-1', convert_to('{}', 'UTF8'), '{}');
        INSERT INTO outbox_sequences VALUES ('order', 'o-1', 1);
        INSERT INTO processed_events (consumer, event_id) VALUES ('c', gen_random_uuid());
        INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,
                                        last_sequence)
            VALUES ('c', 'order', 'order', 'o-1', 1);
        INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id, sequence,
                                   topic, partition, "offset", value, headers)
            VALUES ('c', 'order', 'order', 'o-1', 3, 'orders', 0, 7,
                    convert_to('{}', 'UTF8'), '{}');
        INSERT INTO dead_letters (consumer, topic, partition, "offset", message_key, value,
                                  headers, error, attempts)
            VALUES ('c', 'orders', 0, 5, convert_to('o-1', 'UTF8'),
                    convert_to('not json', 'UTF8'), '{}', 'poison', 3);
        """
    )


async def order_at_0001(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO orders (order_id, customer_id, status, items, shipping_address, version,
                            correlation_id, idempotency_key, request_hash, created_at,
                            updated_at)
            VALUES (gen_random_uuid(), 'c-1', 'PENDING', '[{"sku": "A", "quantity": 1}]',
                    '{"line1": "1 Main St", "city": "X", "postal_code": "1", "country": "NL"}',
                    1, 'corr-1', 'key-1', 'hash-1', now(), now());
        INSERT INTO known_skus (sku, available) VALUES ('A', 10);
        """
    )


async def inventory_at_0001(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO stock (sku, available, reserved, shipped) VALUES ('A', 9, 1, 0);
        INSERT INTO reservations (order_id, items, status)
            VALUES (gen_random_uuid(), '[{"sku": "A", "quantity": 1}]', 'RESERVED');
        """
    )


async def shipping_at_0001(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                               updated_at)
            VALUES (gen_random_uuid(), gen_random_uuid(), 'SCHEDULED', now(), now(), now());
        """
    )


async def shipments_get_an_empty_trace_context(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow("SELECT correlation_id, trace_headers FROM shipments")
    assert row is not None
    assert (row["correlation_id"], row["trace_headers"]) == ("", "{}")


async def streams_with_parked_events(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,
                                        last_sequence)
            VALUES ('c', 'order', 'order', 'waits', 1), ('c', 'order', 'order', 'free', 4);
        INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id, sequence,
                                   topic, partition, "offset", value, headers)
            VALUES ('c', 'order', 'order', 'waits', 3, 'orders', 0, 7, '', '{}'),
                   ('c', 'order', 'order', 'waits', 4, 'orders', 0, 8, '', '{}'),
                   ('other', 'order', 'order', 'free', 9, 'orders', 0, 9, '', '{}');
        """
    )


async def streams_count_their_parked_events(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT aggregate_id, parked FROM consumer_sequences")
    assert {r["aggregate_id"]: r["parked"] for r in rows} == {"waits": 2, "free": 0}


# (service, revision) -> rows in that revision's shape, inserted before the next one runs.
SEEDS: dict[tuple[str, str], list[Seed]] = {
    ("order", "0001"): [machinery_at_0001, order_at_0001],
    ("inventory", "0001"): [machinery_at_0001, inventory_at_0001],
    ("shipping", "0001"): [machinery_at_0001, shipping_at_0001],
    ("order", "0006"): [streams_with_parked_events],
    ("inventory", "0007"): [streams_with_parked_events],
    ("shipping", "0008"): [streams_with_parked_events],
}
# (service, revision) -> what must hold after upgrading to it from the seeded revision before.
CHECKS: dict[tuple[str, str], Seed] = {
    ("shipping", "0002"): shipments_get_an_empty_trace_context,
    ("order", "0007"): streams_count_their_parked_events,
    ("inventory", "0008"): streams_count_their_parked_events,
    ("shipping", "0009"): streams_count_their_parked_events,
}


async def seed(service: str, revision: str | None, url: str) -> None:
    if revision is None:
        return
    async with connected(url) as conn:
        for insert in SEEDS.get((service, revision), []):
            await insert(conn)


# ---- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
async def test_upgrade_from_empty_to_head_creates_the_service_and_machinery_tables(
    service: str,
) -> None:
    async with empty_database() as url:
        await upgrade(service, url, "head")
        assert await tables(url) == OWN_TABLES[service] | MACHINERY | {"alembic_version"}


@pytest.mark.parametrize(("service", "previous", "revision"), REVISION_STEPS)
async def test_each_revision_upgrades_the_one_before_it_without_losing_rows(
    service: str, previous: str | None, revision: str
) -> None:
    async with empty_database() as url:
        if previous is not None:
            await upgrade(service, url, previous)
        await seed(service, previous, url)
        before = await row_counts(url)
        await upgrade(service, url, revision)
        after = await row_counts(url)
        kept = {t: after.get(t) for t in before if t != "alembic_version"}
        assert kept == {t: n for t, n in before.items() if t != "alembic_version"}, "rows lost"
        if (check := CHECKS.get((service, revision))) is not None:
            async with connected(url) as conn:
                await check(conn)


@pytest.mark.parametrize(("service", "previous", "revision"), REVISION_STEPS)
async def test_each_revision_downgrades_to_exactly_the_schema_before_it_and_reapplies(
    service: str, previous: str | None, revision: str
) -> None:
    async with empty_database() as url:
        if previous is not None:
            await upgrade(service, url, previous)
        await seed(service, previous, url)
        schema_before = await schema(url)
        await upgrade(service, url, revision)
        schema_after = await schema(url)

        await downgrade(service, url, previous)
        assert await schema(url) == schema_before
        if previous is None:
            assert await tables(url) == {"alembic_version"}

        await upgrade(service, url, revision)
        assert await schema(url) == schema_after


@pytest.mark.parametrize("service", SERVICES)
async def test_downgrade_to_base_leaves_only_alembic_version_and_head_returns_the_same(
    service: str,
) -> None:
    async with empty_database() as url:
        await upgrade(service, url, "head")
        head = await schema(url)
        await downgrade(service, url, None)
        assert await tables(url) == {"alembic_version"}
        await upgrade(service, url, "head")
        assert await schema(url) == head


async def test_the_machinery_tables_are_identical_in_every_service_and_in_test_databases() -> None:
    """Every service applies the same machinery steps, and ``create_database()`` (what the
    shared integration tests run on) applies them all: the same tables, to the last index."""
    urls = {"create_database()": await create_database()}
    try:
        for service, migrations in SERVICES.items():
            urls[service] = await create_database(migrations)
        machinery = await schema(urls["create_database()"])
        assert set(machinery) == MACHINERY
        for service in SERVICES:
            at_head = await schema(urls[service])
            assert {t: at_head.get(t) for t in machinery} == machinery, service
    finally:
        for url in urls.values():
            await drop_database(url)
