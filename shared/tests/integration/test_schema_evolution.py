"""Schema evolution against real Kafka and PostgreSQL: v1 records written raw, as an old
producer wrote them, are read by today's consumer with today's model (v1 has none of its own);
v2 records by yesterday's consumer, which knows only v1. (Records that do not decode are in
test_consumer.py's poison test.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import Field

from shared import contracts
from shared.consuming.consumer import ConsumerRunner
from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.processing import EventProcessor
from shared.consuming.routing import Router
from shared.contracts import IntegrationEvent, current, integration_event
from shared.contracts.catalog import ORDER_ID, InventoryRejected, Shortfall
from shared.contracts.compatibility import schema_of
from shared.contracts.envelope import new_envelope
from shared.kafka import Producer
from shared.persistence.postgres import PostgresUnitOfWork
from shared.service.settings import ServiceSettings
from shared.testing.infra import (
    create_topics,
    eventually,
    kafka_bootstrap,
    start_group_at_end,
    unique,
)

SEEN = "CREATE TABLE seen (id serial PRIMARY KEY, reason text NOT NULL, shortfalls int)"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


# Yesterday's model, as the committed v1 schema has it: the catalog keeps none. (A comment,
# not a docstring: a docstring would be part of its schema.)
class InventoryRejectedV1(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    reason: str = Field(description="Why, for people: every shortfall, joined by '; '.")


def raw_v1(key: str, sequence: int, reason: str) -> bytes:
    """An InventoryRejected v1 exactly as yesterday's inventory wrote it."""
    return json.dumps(
        {
            "event_id": str(uuid4()),
            "event_type": "InventoryRejected",
            "schema_version": 1,
            "source": "inventory",
            "aggregate_type": "reservation",
            "aggregate_id": key,
            "sequence": sequence,
            "occurred_at": datetime.now(UTC).isoformat(),
            "correlation_id": unique("corr"),
            "causation_id": None,
            "payload": {"order_id": key, "reason": reason},
        }
    ).encode()


def today_v2(key: str, sequence: int, reason: str) -> bytes:
    event = InventoryRejected(
        order_id=UUID(key),
        reason=reason,
        shortfalls=(Shortfall(sku="B", wanted=2, available=1),),
    )
    envelope = new_envelope(
        event,
        source="inventory",
        aggregate_id=key,
        sequence=sequence,
        correlation_id=unique("corr"),
        causation_id=None,
    )
    assert envelope.schema_version == 2
    return envelope.to_bytes()


async def produce(key: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait("inventory", value, key=key.encode())
    finally:
        await producer.stop()


async def seen(pool: asyncpg.Pool) -> list[tuple[str, int | None]]:
    rows = await pool.fetch("SELECT reason, shortfalls FROM seen ORDER BY id")
    return [(r["reason"], r["shortfalls"]) for r in rows]


@pytest.fixture
async def run_consumer(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> AsyncIterator[Callable[[Router[PostgresUnitOfWork]], asyncio.Task[None]]]:
    await pool.execute(SEEN)
    await create_topics(settings.dlq_topic)
    await start_group_at_end(settings.consumer_group, ["inventory"])
    producer = Producer(settings)
    tasks: list[asyncio.Task[None]] = []

    def start(router: Router[PostgresUnitOfWork]) -> asyncio.Task[None]:
        processor = EventProcessor(router, lambda: PostgresUnitOfWork(pool, settings.service_name))
        sink = DeadLetterSink(pool, producer, settings.service_name)
        runner = ConsumerRunner(settings, processor, router.topics, sink)
        tasks.append(asyncio.create_task(runner.run()))
        return tasks[-1]

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.close()


async def test_v1_records_of_an_old_producer_are_read_by_today_s_consumer(
    run_consumer: Callable[[Router[PostgresUnitOfWork]], asyncio.Task[None]],
    pool: asyncpg.Pool,
) -> None:
    today = Router[PostgresUnitOfWork]()

    @today.subscriber(InventoryRejected)
    async def when_inventory_rejected_note_it(
        event: InventoryRejected, uow: PostgresUnitOfWork
    ) -> None:
        await uow.conn.execute(
            "INSERT INTO seen (reason, shortfalls) VALUES ($1, $2)",
            event.reason,
            len(event.shortfalls),
        )

    run_consumer(today)
    key = str(uuid4())
    await produce(key, [raw_v1(key, 1, "old"), today_v2(key, 2, "new")])
    rows = await eventually(lambda: seen(pool), lambda rows: len(rows) >= 2)
    assert rows == [("old", 0), ("new", 1)]  # v1 read as v2, no shortfalls; v2 with its one
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_v2_records_are_read_by_yesterday_s_consumer_that_knows_only_v1(
    run_consumer: Callable[[Router[PostgresUnitOfWork]], asyncio.Task[None]],
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = str(uuid4())
    records = [raw_v1(key, 1, "old"), today_v2(key, 2, "new")]  # written by today's producer
    # Yesterday's catalog: InventoryRejected v1 is the newest version it has.
    today = current("InventoryRejected")
    for name in ("_REGISTRY", "_BY_MODEL", "_CURRENT"):
        monkeypatch.setattr(contracts, name, dict(getattr(contracts, name)))
    del contracts._REGISTRY[("InventoryRejected", 2)]
    del contracts._BY_MODEL[today.model]
    del contracts._CURRENT["InventoryRejected"]
    on_inventory = integration_event(
        topic="inventory", aggregate_type="reservation", name="InventoryRejected"
    )
    on_inventory(InventoryRejectedV1)
    v1 = json.loads((SCHEMAS / "InventoryRejected" / "v1.json").read_text())
    assert schema_of(current("InventoryRejected")) == v1  # yesterday's model, as published
    yesterday = Router[PostgresUnitOfWork]()

    @yesterday.subscriber(InventoryRejectedV1)
    async def when_inventory_rejected_note_it(
        event: InventoryRejectedV1, uow: PostgresUnitOfWork
    ) -> None:
        await uow.conn.execute("INSERT INTO seen (reason) VALUES ($1)", event.reason)

    run_consumer(yesterday)
    await produce(key, records)
    rows = await eventually(lambda: seen(pool), lambda rows: len(rows) >= 2)
    assert rows == [("old", None), ("new", None)]  # the v2 field ignored, the event applied
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
