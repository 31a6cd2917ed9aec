"""Housekeeping against real PostgreSQL and Kafka: gaps that never fill (and those that wait
for a dead-lettered predecessor), dedup purge."""

from __future__ import annotations

from uuid import uuid4

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from shared.consuming.deadletter import DeadLetter, DeadLetterSink
from shared.consuming.inbox import ParkedEvent
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import new_envelope
from shared.kafka import Producer
from shared.observability.metrics import DEAD_LETTERS
from shared.persistence.maintenance import expire_gaps, purge_processed_events
from shared.persistence.postgres import PostgresInbox
from shared.service.settings import ServiceSettings
from shared.testing.infra import create_topics, end_offsets, read_records


async def test_an_event_parked_past_the_gap_timeout_is_dead_lettered_with_the_reason(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    await create_topics(settings.dlq_topic)
    envelope = new_envelope(
        OrderRejected(order_id=uuid4(), reason="r"),
        source="order",
        aggregate_id="agg-1",
        sequence=3,
        correlation_id="c",
        causation_id=None,
    )
    async with pool.acquire() as conn, conn.transaction():
        await PostgresInbox(conn, settings.service_name).park(  # type: ignore[arg-type]
            ParkedEvent(envelope, "orders", 1, 17, {"event_type": "OrderRejected"})
        )
    producer = Producer(settings)
    sink = DeadLetterSink(pool, producer, settings.service_name)
    since = await end_offsets(settings.dlq_topic)
    counted = DEAD_LETTERS.labels(settings.service_name, "orders")._value.get()
    parked_count = "SELECT parked FROM consumer_sequences WHERE aggregate_id = 'agg-1'"
    try:
        assert await expire_gaps(pool, sink, settings.service_name, 3600) == 0  # not yet
        assert await pool.fetchval(parked_count) == 1
        assert await expire_gaps(pool, sink, settings.service_name, 0) == 1
        assert await pool.fetchval(parked_count) == 0
        records = await read_records(settings.dlq_topic, since, lambda rs: len(rs) == 1)
    finally:
        await producer.close()
    letter = await pool.fetchrow("SELECT * FROM dead_letters")
    assert letter is not None
    assert "waited 0s for sequence 1 of order/order/agg-1; this is sequence 3" in letter["error"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("orders", 1, 17)
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0
    headers = {k: v.decode() for k, v in records[0].headers}  # type: ignore[attr-defined]
    assert headers["dlq.error"].startswith("sequence gap")
    assert DEAD_LETTERS.labels(settings.service_name, "orders")._value.get() == counted + 1


async def test_dedup_rows_older_than_the_retention_are_purged_and_newer_ones_kept(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    old, recent = uuid4(), uuid4()
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " VALUES ($1, $2, now() - interval '8 days'), ($1, $3, now())",
        settings.service_name,
        old,
        recent,
    )
    assert await purge_processed_events(pool, settings.service_name, 24 * 7) == 1
    rows = await pool.fetch("SELECT event_id FROM processed_events")
    assert [r["event_id"] for r in rows] == [recent]


async def park(pool: asyncpg.Pool, consumer: str, aggregate_id: str, sequence: int) -> None:
    event = new_envelope(
        OrderRejected(order_id=uuid4(), reason="r"),
        source="order",
        aggregate_id=aggregate_id,
        sequence=sequence,
        correlation_id="c",
        causation_id=None,
    )
    async with pool.acquire() as conn, conn.transaction():
        await PostgresInbox(conn, consumer).park(  # type: ignore[arg-type]
            ParkedEvent(event, "orders", 0, 40 + sequence, {"event_type": "OrderRejected"})
        )


async def test_a_gap_letter_that_cannot_be_published_leaves_the_event_parked_and_no_letter(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    await park(pool, settings.service_name, "agg-1", 3)
    unreachable = settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    producer = Producer(unreachable)
    sink = DeadLetterSink(pool, producer, settings.service_name)
    try:
        with pytest.raises(KafkaError):
            await expire_gaps(pool, sink, settings.service_name, 0)
    finally:
        await producer.close()
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0, "a phantom letter"
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 1


async def test_a_parked_successor_waits_while_its_missing_predecessor_is_a_pending_letter(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """Inventory dead-letters an order's OrderPlaced (#1); its OrderCancelled (#2) is parked.
    Dead-lettering #2 as well would leave two letters, and a replay of only the first would
    reserve stock for a cancelled order: #2 waits for #1's replay instead."""
    consumer = settings.service_name
    await create_topics(settings.dlq_topic)
    producer = Producer(settings)
    sink = DeadLetterSink(pool, producer, consumer)
    first = new_envelope(
        OrderRejected(order_id=uuid4(), reason="r"),
        source="order",
        aggregate_id="order-1",
        sequence=1,
        correlation_id="c",
        causation_id=None,
    )
    try:
        await sink.send(
            DeadLetter.of_record(
                consumer, "orders", 0, 40, 1, b"order-1", first.to_bytes(), {}, "poison", 5, first
            )
        )
        await park(pool, consumer, "order-1", 2)
        await park(pool, consumer, "order-2", 2)  # a gap with no letter behind it: expires
        assert await expire_gaps(pool, sink, consumer, 0) == 1
        parked = await pool.fetch("SELECT aggregate_id, sequence FROM parked_events")
        assert [(r["aggregate_id"], r["sequence"]) for r in parked] == [("order-1", 2)]

        # Replayed: the successor gets a gap timeout of its own for the replay to arrive...
        await pool.execute("UPDATE parked_events SET parked_at = now() - interval '1 hour'")
        await pool.execute("UPDATE dead_letters SET replayed_at = now() - interval '10 seconds'")
        assert await expire_gaps(pool, sink, consumer, 60) == 0
        # ... and once that has passed, the gap is a gap again.
        assert await expire_gaps(pool, sink, consumer, 5) == 1
    finally:
        await producer.close()
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0
