"""A record's failed attempts are counted in the consumer's database, so a record that always
fails is dead-lettered after ``consumer_max_attempts`` in all, however often its partition
changes hands meanwhile (real Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.consuming.consumer import ConsumerRunner
from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.processing import EventProcessor
from shared.consuming.routing import Router
from shared.contracts.catalog import OrderRejected
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

failing = Router[PostgresUnitOfWork]()
ATTEMPTS: list[str] = []


@failing.subscriber(OrderRejected)
async def when_order_rejected_always_fail(event: OrderRejected, uow: PostgresUnitOfWork) -> None:
    ATTEMPTS.append(event.reason)
    raise RuntimeError("a handler bug this record always triggers")


async def send_one(topic: str) -> None:
    key = unique("order")
    envelope = new_envelope(
        OrderRejected(order_id=uuid4(), reason="always fails"),
        source="order",
        aggregate_id=key,
        sequence=1,
        correlation_id=unique("corr"),
        causation_id=None,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, envelope.to_bytes(), key=key.encode())
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def a_member(
    pool: asyncpg.Pool, settings: ServiceSettings, topic: str
) -> AsyncIterator[None]:
    """A member of the group, owning ``topic`` until the block ends (then it leaves, and the
    next member gets the partition: what a rebalance does)."""
    producer = Producer(settings)
    runner = ConsumerRunner(
        settings,
        EventProcessor(failing, lambda: PostgresUnitOfWork(pool, settings.service_name)),
        [topic],
        DeadLetterSink(pool, producer, settings.service_name),
    )
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.close()


async def attempt_once_and_leave(pool: asyncpg.Pool, settings: ServiceSettings, topic: str) -> None:
    """A member gets the partition, fails the record once and leaves while it waits out its
    retry delay."""
    before = len(ATTEMPTS)
    async with a_member(pool, settings, topic):
        await eventually(lambda: asyncio.sleep(0, len(ATTEMPTS)), lambda n: n > before)
        await asyncio.sleep(1.0)  # time to record the failure, then it waits


async def test_a_record_that_always_fails_is_dead_lettered_after_the_attempts_of_all_its_owners(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    # A retry delay no member lives through here: each makes one attempt, then hands over.
    # One record at a time (no batch), so each attempt is one call of the handler.
    settings = settings.model_copy(
        update={
            "consumer_max_attempts": 3,
            "consumer_retry_backoff_seconds": 60.0,
            "consumer_batch": False,
        }
    )
    topic = unique("orders")
    await create_topics(topic, settings.dlq_topic, partitions=1)
    await start_group_at_end(settings.consumer_group, [topic])
    ATTEMPTS.clear()
    await send_one(topic)
    for owner in (1, 2):
        await attempt_once_and_leave(pool, settings, topic)
        assert len(ATTEMPTS) == owner
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    async with a_member(pool, settings, topic):
        letters = await eventually(
            lambda: pool.fetch("SELECT attempts, error FROM dead_letters"),
            lambda rows: len(rows) == 1,
            timeout=20,
        )
    assert len(ATTEMPTS) == 3  # one attempt per owner: 3 in all, not 3 per owner
    assert letters[0]["attempts"] == 3
    assert "a handler bug this record always triggers" in letters[0]["error"]
    assert await pool.fetchval("SELECT count(*) FROM consumer_attempts") == 0
