"""A record waiting out its retries holds only its own partition: the consumer keeps
applying the others (real Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from shared.testing.worker import APPLIED_TABLE

flaky = Router[PostgresUnitOfWork]()
ATTEMPTS: list[float] = []


@flaky.subscriber(OrderRejected)
async def when_order_rejected_fail_on_bad_ones(
    event: OrderRejected, uow: PostgresUnitOfWork
) -> None:
    if event.reason == "bad":
        ATTEMPTS.append(time.monotonic())
        raise RuntimeError("a handler bug this record triggers")
    await uow.conn.execute(
        "INSERT INTO applied (aggregate_id, reason) VALUES ($1, $2)", "x", event.reason
    )


async def send(topic: str, partition: int, reasons: list[str]) -> None:
    key = unique("order")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
    await producer.start()
    try:
        for sequence, reason in enumerate(reasons, start=1):
            envelope = new_envelope(
                OrderRejected(order_id=uuid4(), reason=reason),
                source="order",
                aggregate_id=key,
                sequence=sequence,
                correlation_id=unique("corr"),
                causation_id=None,
            )
            await producer.send_and_wait(
                topic, envelope.to_bytes(), key=key.encode(), partition=partition
            )
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def consuming(
    pool: asyncpg.Pool, settings: ServiceSettings, router: Router[PostgresUnitOfWork]
) -> AsyncIterator[str]:
    """A consumer running ``router`` over a topic of its own (no other test's records reach
    it), until the block ends; yields the topic."""
    await pool.execute(APPLIED_TABLE)
    topic = unique("orders")
    await create_topics(topic, settings.dlq_topic)
    await start_group_at_end(settings.consumer_group, [topic])
    producer = Producer(settings)
    runner = ConsumerRunner(
        settings,
        EventProcessor(router, lambda: PostgresUnitOfWork(pool, settings.service_name)),
        [topic],
        DeadLetterSink(pool, producer, settings.service_name),
    )
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: asyncio.sleep(0, runner.running), bool)
        yield topic
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.close()


async def applied(pool: asyncpg.Pool) -> list[str]:
    return [r["reason"] for r in await pool.fetch("SELECT reason FROM applied")]


async def test_a_record_in_retries_does_not_hold_up_the_other_partitions(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    # Four attempts 1 s, 2 s, 4 s apart: the bad record holds its partition for 7 s.
    settings = settings.model_copy(
        update={"consumer_retry_backoff_seconds": 1.0, "consumer_max_attempts": 4}
    )
    ATTEMPTS.clear()
    async with consuming(pool, settings, flaky) as topic:
        await send(topic, 0, ["bad"])
        await eventually(lambda: asyncio.sleep(0, len(ATTEMPTS)), lambda n: n >= 1)
        sent = time.monotonic()
        await send(topic, 1, ["good-1", "good-2"])
        await eventually(
            lambda: applied(pool), lambda rows: sorted(rows) == ["good-1", "good-2"], timeout=20
        )
        waited = time.monotonic() - sent
        assert len(ATTEMPTS) < 4, "the bad record was already dead-lettered: nothing shown"
        assert waited < 4.0, f"the other partition waited {waited:.1f}s behind the retries"
        letters = await eventually(
            lambda: pool.fetch("SELECT * FROM dead_letters"), lambda rows: len(rows) == 1
        )
        assert letters[0]["attempts"] == 4


racing = Router[PostgresUnitOfWork]()
FIRST_TRIES: set[str] = set()


@racing.subscriber(OrderRejected)
async def when_order_rejected_lock_two_rows(event: OrderRejected, uow: PostgresUnitOfWork) -> None:
    """Locks the two rows its reason names ("a,b"), in that order. On its first try it waits,
    holding the first, until the other record's first try holds its own: so two records
    naming the rows in opposite orders deadlock."""
    first, second = event.reason.split(",")
    await uow.conn.execute("SELECT 1 FROM race_rows WHERE name = $1 FOR UPDATE", first)
    if event.reason not in FIRST_TRIES:
        FIRST_TRIES.add(event.reason)
        deadline = time.monotonic() + 5
        while len(FIRST_TRIES) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    await uow.conn.execute("SELECT 1 FROM race_rows WHERE name = $1 FOR UPDATE", second)
    await uow.conn.execute(
        "INSERT INTO applied (aggregate_id, reason) VALUES ($1, $2)", "x", event.reason
    )


async def test_a_transaction_that_loses_a_deadlock_is_run_again_not_dead_lettered(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    # One attempt only: were the deadlock's victim counted as a failed attempt, it would be
    # dead-lettered at once.
    settings = settings.model_copy(update={"consumer_concurrency": 2, "consumer_max_attempts": 1})
    await pool.execute("CREATE TABLE race_rows (name text PRIMARY KEY)")
    await pool.execute("INSERT INTO race_rows VALUES ('a'), ('b')")
    FIRST_TRIES.clear()
    async with consuming(pool, settings, racing) as topic:
        await asyncio.gather(send(topic, 0, ["a,b"]), send(topic, 1, ["b,a"]))
        await eventually(
            lambda: applied(pool), lambda rows: sorted(rows) == ["a,b", "b,a"], timeout=20
        )
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
