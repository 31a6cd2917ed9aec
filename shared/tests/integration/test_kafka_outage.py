"""A broker that stops answering (a network partition, simulated by a proxy in front of the
real broker) must not block the producer reset, the relay's database work or shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar, cast

import asyncpg
import pytest
from aiokafka import ConsumerRecord

from shared import kafka
from shared.kafka import Producer
from shared.persistence.postgres import PostgresUnitOfWork
from shared.service.runtime import Runtime, ServiceDefinition
from shared.service.settings import ServiceSettings
from shared.testing.infra import end_offsets, eventually, read_records, start_group_at_end, unique
from shared.testing.outage import BrokerProxy
from shared.testing.worker import APPLIED_TABLE
from shared.testing.worker import router as worker_router
from shared.writing.outbox import OutgoingMessage
from shared.writing.relay import OutboxRelay

from .test_relay import write_event

# Far below the broker's request timeout: the records stay in flight, retried by the
# idempotent producer, when the publish gives up.
PUBLISH_TIMEOUT = 1.0
BOUND = 5.0  # seconds a reset or a stop may take during the outage

T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    """The result of ``work``, which must take less than ``seconds`` (else it is cancelled
    and the test fails rather than hangs)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise AssertionError(f"still waiting after {seconds}s")
    return task.result()


@pytest.fixture
async def proxy() -> AsyncIterator[BrokerProxy]:
    proxy = BrokerProxy()
    try:
        with proxy.route():
            yield proxy
    finally:
        await proxy.close()


@pytest.fixture(autouse=True)
def short_publish_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "PUBLISH_TIMEOUT", PUBLISH_TIMEOUT)


def keys_of(records: list[object]) -> set[bytes]:
    return {cast(ConsumerRecord, r).key for r in records}


def message(key: str) -> OutgoingMessage:
    return OutgoingMessage("orders", key, b"{}", {})


async def test_a_publish_that_times_out_in_an_outage_resets_the_producer_at_once(
    settings: ServiceSettings, proxy: BrokerProxy
) -> None:
    producer = Producer(settings)
    try:
        await producer.publish([message(unique("warm"))])
        proxy.cut = True
        with pytest.raises(TimeoutError):
            await within(PUBLISH_TIMEOUT + BOUND, producer.publish([message(unique("lost"))]))
        # The producer lock is free: the next caller is not queued behind the old producer.
        assert not await within(BOUND, producer.ready(timeout=0.5))
    finally:
        await within(BOUND, producer.close())


async def test_closing_a_producer_with_records_in_flight_returns_during_an_outage(
    settings: ServiceSettings, proxy: BrokerProxy
) -> None:
    producer = Producer(settings)
    client = await producer.get()
    await producer.publish([message(unique("warm"))])
    proxy.cut = True
    await client.send("orders", b"{}", key=unique("pending").encode())
    await within(BOUND, producer.close())


async def test_the_relay_holds_no_transaction_while_the_broker_is_unreachable_and_resumes_after(
    pool: asyncpg.Pool, settings: ServiceSettings, proxy: BrokerProxy
) -> None:
    key = unique("agg")
    await write_event(pool, settings.service_name, key)
    producer = Producer(settings)
    relay = OutboxRelay(settings, pool, producer)
    try:
        since = await end_offsets("orders")
        await producer.get()
        proxy.cut = True
        publishing = asyncio.create_task(relay.publish_batch())
        await asyncio.sleep(PUBLISH_TIMEOUT / 2)
        # Mid-publish: no open transaction, and the rows are not locked.
        in_transaction = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        )
        assert in_transaction == 0
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch("SELECT id FROM outbox FOR UPDATE NOWAIT")
        with pytest.raises(TimeoutError):
            await within(PUBLISH_TIMEOUT + BOUND, publishing)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # kept for the resend

        proxy.restore()

        async def published() -> int:
            try:
                return await relay.publish_batch()
            except TimeoutError:
                return 0

        await eventually(published, lambda n: n == 1)
        await read_records("orders", since, lambda rs: key.encode() in keys_of(rs))
        assert await relay.publish_batch() == 0  # and deletes the row the broker acknowledged
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await within(BOUND, producer.close())


async def test_a_service_stops_within_seconds_during_a_broker_outage(
    database: str, settings: ServiceSettings, proxy: BrokerProxy
) -> None:
    await start_group_at_end(settings.consumer_group, list(worker_router.topics))
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(APPLIED_TABLE)
    finally:
        await conn.close()
    runtime = Runtime(
        ServiceDefinition(
            settings=settings,
            title="outage",
            description="a service whose broker stops answering",
            router=worker_router,
            new_uow=PostgresUnitOfWork,
            migrations=Path("unused"),
        )
    )
    await runtime.start()
    stopped = False
    try:
        await eventually(lambda: asyncio.sleep(0, runtime.consumer.running), bool)
        await write_event(runtime.pool, settings.service_name, unique("agg"))
        await asyncio.sleep(0.5)  # the relay and the consumer are talking to the broker
        proxy.cut = True
        await write_event(runtime.pool, settings.service_name, unique("agg"))
        runtime.relay.wake()
        await asyncio.sleep(PUBLISH_TIMEOUT * 2)  # a publish timed out: the reset is done
        stopped = True
        await within(BOUND, runtime.stop())
    finally:
        if not stopped:
            await within(BOUND, runtime.stop())
