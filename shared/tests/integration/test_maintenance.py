"""Housekeeping against real PostgreSQL and Kafka: gaps that never fill, dedup purge."""

from __future__ import annotations

from uuid import uuid4

import asyncpg

from shared.contracts.catalog import OrderRejected
from shared.deadletter import DeadLetterSink
from shared.envelope import new_envelope
from shared.inbox import ParkedEvent
from shared.kafka import Producer
from shared.maintenance import expire_gaps, purge_processed_events
from shared.metrics import DEAD_LETTERS
from shared.postgres import PostgresInbox
from shared.settings import ServiceSettings
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
    try:
        assert await expire_gaps(pool, sink, settings.service_name, 3600) == 0  # not yet
        assert await expire_gaps(pool, sink, settings.service_name, 0) == 1
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
