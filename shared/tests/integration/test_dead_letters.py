"""Dead letters against real PostgreSQL and Kafka: every letter its own identity, and a
stream's letters replayed in sequence order through the admin API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from uuid import uuid4

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from shared.consuming.deadletter import DeadLetter, DeadLetterSink
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import Envelope, new_envelope
from shared.kafka import Producer
from shared.service.admin import router as admin_router
from shared.service.settings import ServiceSettings
from shared.testing.infra import create_topics, end_offsets, read_records, unique


def envelope(aggregate_id: str, sequence: int) -> Envelope:
    return new_envelope(
        OrderRejected(order_id=uuid4(), reason=f"r{sequence}"),
        source="order",
        aggregate_id=aggregate_id,
        sequence=sequence,
        correlation_id=unique("corr"),
        causation_id=None,
    )


def letter_of(
    consumer: str, event: Envelope, *, offset: int, timestamp: int = 1_700_000_000_000
) -> DeadLetter:
    return DeadLetter.of_record(
        consumer,
        "orders",
        0,
        offset,
        timestamp,
        event.aggregate_id.encode(),
        event.to_bytes(),
        {"event_type": event.event_type},
        "DomainError: refused",
        1,
        event,
    )


@pytest.fixture
async def sink(pool: asyncpg.Pool, settings: ServiceSettings) -> AsyncIterator[DeadLetterSink]:
    await create_topics(settings.dlq_topic)
    producer = Producer(settings)
    try:
        yield DeadLetterSink(pool, producer, settings.service_name)
    finally:
        await producer.close()


async def test_another_record_at_an_offset_already_dead_lettered_is_a_letter_of_its_own(
    sink: DeadLetterSink, pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """Offsets repeat when the broker is reformatted and the database kept; a redelivery
    of the very same record (a crash before the offset commit) is still one letter."""
    since = await end_offsets(settings.dlq_topic)
    before = letter_of(settings.service_name, envelope("agg-1", 1), offset=5)
    after_reformat = letter_of(
        settings.service_name, envelope("agg-2", 1), offset=5, timestamp=1_800_000_000_000
    )
    await sink.send(before)
    await sink.send(after_reformat)
    await sink.send(before)  # redelivered

    rows = await pool.fetch(
        'SELECT letter_id, "offset", aggregate_id FROM dead_letters ORDER BY id'
    )
    assert [(r["offset"], r["aggregate_id"]) for r in rows] == [(5, "agg-1"), (5, "agg-2")]
    assert [r["letter_id"] for r in rows] == [before.letter_id, after_reformat.letter_id]
    ends = await end_offsets(settings.dlq_topic)
    assert sum(ends.values()) - sum(since.values()) == 2, "a letter kept before went out again"
    records = await read_records(settings.dlq_topic, since, lambda rs: len(rs) == 2)
    ids = {dict(r.headers)["dlq.letter_id"].decode() for r in records}  # type: ignore[attr-defined]
    assert ids == {str(before.letter_id), str(after_reformat.letter_id)}


@pytest.fixture
async def admin(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(admin_router)
    app.state.runtime = SimpleNamespace(
        http_pool=pool,
        relay=SimpleNamespace(wake=lambda: None),
        settings=SimpleNamespace(admin_token="t"),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers={"X-Admin-Token": "t"}
    ) as client:
        yield client


async def test_a_stream_s_pending_letters_are_replayed_once_in_sequence_order(
    sink: DeadLetterSink, pool: asyncpg.Pool, settings: ServiceSettings, admin: httpx.AsyncClient
) -> None:
    consumer = settings.service_name
    e1, e2, e3 = (envelope("order-1", n) for n in (1, 2, 3))
    for offset, event in enumerate([e3, e1, e2]):  # dead-lettered out of order
        await sink.send(letter_of(consumer, event, offset=offset))
    await sink.send(letter_of(consumer, envelope("order-2", 1), offset=9))  # another stream

    listed = (await admin.get("/admin/dlq", params={"aggregate_id": "order-1"})).json()
    assert sorted(i["sequence"] for i in listed["items"]) == [1, 2, 3]
    assert {i["aggregate_id"] for i in listed["items"]} == {"order-1"}

    response = await admin.post("/admin/dlq/streams/replay", json={"aggregate_id": "order-1"})
    assert response.status_code == 202, response.text
    assert len(response.json()["items"]) == 3

    outbox = await pool.fetch("SELECT message_key, value, headers FROM outbox ORDER BY id")
    assert [json.loads(r["value"])["sequence"] for r in outbox] == [1, 2, 3]
    assert [json.loads(r["value"])["event_id"] for r in outbox] == [
        str(e.event_id) for e in (e1, e2, e3)
    ]
    assert {r["message_key"] for r in outbox} == {"order-1"}
    assert all("replayed_from_dlq" in json.loads(r["headers"]) for r in outbox)
    pending = await pool.fetch("SELECT aggregate_id FROM dead_letters WHERE replayed_at IS NULL")
    assert [r["aggregate_id"] for r in pending] == ["order-2"]

    again = await admin.post("/admin/dlq/streams/replay", json={"aggregate_id": "order-1"})
    assert again.status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 3
