"""``POST /inventory/{sku}/restock`` through the real HTTP route against real PostgreSQL:
retries that race with their first attempt add once, concurrent restocks add up exactly,
the record and the stock change commit together, and the level is held for Kafka,
debounced, as a ``PUT``'s is. (No Kafka here: what is held is read from its table.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from inventory.api import REPLAYED_HEADER, units_of_work
from inventory.bootstrap import MIGRATIONS, bootstrap
from inventory.postgres import PostgresInventoryUnitOfWork
from inventory.settings import Settings
from shared.service.http import create_app, unit_of_work
from shared.testing.infra import migrated_pool

NewUow = Callable[[], PostgresInventoryUnitOfWork]


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS, max_size=12) as pool:
        yield pool


def an_app(new_uow: NewUow) -> httpx.AsyncClient:
    """The inventory app in-process, without its lifespan (no Kafka, relay or consumer),
    its requests' units of work on ``new_uow``."""
    settings = Settings(
        database_url="postgresql://unused/inventory",
        admin_token="integration-test-token",
        otel_sdk_disabled=True,
    )
    app = create_app(bootstrap(settings))

    async def on_the_pool() -> AsyncIterator[PostgresInventoryUnitOfWork]:
        async with new_uow() as uow:
            yield uow

    app.dependency_overrides[unit_of_work] = on_the_pool
    app.dependency_overrides[units_of_work] = lambda: new_uow
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://inventory")


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with an_app(lambda: PostgresInventoryUnitOfWork(pool, "inventory")) as client:
        yield client


async def restock(
    client: httpx.AsyncClient, sku: str, quantity: int, key: str | None = None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await client.post(
        f"/inventory/{sku}/restock", json={"quantity": quantity}, headers=headers
    )


def levels(response: httpx.Response) -> tuple[int, int, int]:
    body: dict[str, Any] = response.json()
    return body["available"], body["reserved"], body["shipped"]


async def test_retries_racing_with_their_first_attempt_add_once_and_answer_alike(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Ten requests with one key at once, on a SKU that does not exist yet: one adds, the
    nine others wait on the SKU's row and answer what it answered."""
    answers = await asyncio.gather(*(restock(client, "NEW-1", 5, "delivery-1") for _ in range(10)))
    assert [r.status_code for r in answers] == [200] * 10
    assert {levels(r) for r in answers} == {(5, 0, 0)}
    assert sorted(r.headers.get(REPLAYED_HEADER, "") for r in answers) == [""] + ["true"] * 9
    assert levels(await client.get("/inventory/NEW-1")) == (5, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM restocks") == 1


async def test_concurrent_restocks_and_their_retries_add_exactly_what_was_acknowledged(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """What the load checker relies on: the sum of the acknowledged restocks' quantities is
    what was added, however often each was sent."""
    await client.put("/inventory/HOT", json={"available": 100})
    sends: list[tuple[int, str | None]] = [
        (n, f"delivery-{n}") for n in range(1, 21) for _ in range(3)
    ]  # each sent 3 times
    sends += [(7, None)] * 5  # and some without a key: each adds
    answers = await asyncio.gather(*(restock(client, "HOT", q, key) for q, key in sends))
    assert [r.status_code for r in answers] == [200] * len(sends)
    acknowledged = sum(range(1, 21)) + 5 * 7
    assert levels(await client.get("/inventory/HOT")) == (100 + acknowledged, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM restocks WHERE sku = 'HOT'") == 20


async def test_the_same_key_with_another_quantity_answers_409_and_adds_nothing(
    client: httpx.AsyncClient,
) -> None:
    assert (await restock(client, "A", 5, "delivery-1")).status_code == 200
    conflict = await restock(client, "A", 6, "delivery-1")
    assert conflict.status_code == 409
    assert conflict.json() == {
        "error": "idempotency_key_conflict",
        "message": "Idempotency-Key 'delivery-1' was used for a restock of 5 units of A, not 6",
    }
    other_sku = await restock(client, "B", 6, "delivery-1")
    assert (other_sku.status_code, levels(other_sku)) == (200, (6, 0, 0))
    assert levels(await client.get("/inventory/A")) == (5, 0, 0)


async def test_a_retry_answers_the_levels_right_after_the_first_restock(
    client: httpx.AsyncClient,
) -> None:
    first = await restock(client, "A", 5, "delivery-1")
    await client.put("/inventory/A", json={"available": 1})
    again = await restock(client, "A", 5, "delivery-1")
    assert (levels(first), levels(again)) == ((5, 0, 0), (5, 0, 0))
    assert again.headers[REPLAYED_HEADER] == "true"
    assert levels(await client.get("/inventory/A")) == (1, 0, 0)


class DiesBeforeCommit(PostgresInventoryUnitOfWork):
    """Stands for a process killed after the stock change and the record were written,
    before its transaction committed."""

    async def _commit(self) -> None:
        await self._rollback()
        raise ConnectionResetError("killed before the commit")


async def test_a_restock_that_never_committed_left_neither_its_stock_nor_its_record(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await client.put("/inventory/A", json={"available": 2})
    async with an_app(lambda: DiesBeforeCommit(pool, "inventory")) as dying:
        died = await restock(dying, "A", 5, "delivery-1")
    assert died.status_code == 503  # a lost connection: the database is unavailable
    assert await pool.fetchval("SELECT count(*) FROM restocks") == 0
    assert levels(await client.get("/inventory/A")) == (2, 0, 0)
    retried = await restock(client, "A", 5, "delivery-1")
    assert (levels(retried), retried.headers.get(REPLAYED_HEADER)) == ((7, 0, 0), None)


async def test_a_restock_holds_the_sku_s_level_for_kafka_debounced_like_a_put(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await client.put("/inventory/A", json={"available": 5})
    await restock(client, "A", 3, "delivery-1")
    await restock(client, "A", 3, "delivery-1")  # a retry: no change
    await restock(client, "A", 2)
    rows = await pool.fetch(
        "SELECT aggregate_id, event_type, payload, changes FROM debounced_events"
    )
    assert [(r["aggregate_id"], r["event_type"], r["changes"]) for r in rows] == [
        ("A", "StockLevelChanged", 3)
    ]
    assert json.loads(rows[0]["payload"]) == {
        "sku": "A",
        "available": 10,
        "reserved": 0,
        "shipped": 0,
    }
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
