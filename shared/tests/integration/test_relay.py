"""The outbox relay against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaConnectionError

from shared.contracts.catalog import OrderRejected
from shared.kafka import Producer
from shared.persistence.postgres import PostgresUnitOfWork
from shared.service.settings import ServiceSettings
from shared.testing.infra import end_offsets, eventually, read_records, unique
from shared.writing.aggregate import Aggregate
from shared.writing.outbox import OutgoingMessage
from shared.writing.relay import OutboxRelay


class Thing(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


async def write_event(pool: asyncpg.Pool, source: str, aggregate_id: str) -> None:
    async with PostgresUnitOfWork(pool, source) as uow:
        thing = Thing(aggregate_id)
        thing.record(OrderRejected(order_id=uuid4(), reason=aggregate_id))
        uow.track(thing)
        await uow.commit()


def sequences_by_key(records: list[ConsumerRecord], keys: set[str]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for r in records:
        key = r.key.decode()
        if key in keys:
            seen[key].append(json.loads(r.value)["sequence"])
    return dict(seen)


async def outbox_count(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return count


@dataclass
class Read:
    at: float  # time.monotonic() when the statement was sent
    rows: int


@dataclass
class CountingPool:
    """The real pool, recording each statement the relay sends through it."""

    pool: asyncpg.Pool
    statements: list[str] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.statements.append(query)
        at = time.monotonic()
        rows: list[asyncpg.Record] = await self.pool.fetch(query, *args)
        self.reads.append(Read(at, len(rows)))
        return rows

    async def execute(self, query: str, *args: Any) -> str:
        self.statements.append(query)
        status: str = await self.pool.execute(query, *args)
        return status


@dataclass
class Broker:
    """Stands in for the producer: acknowledges what it is sent, after ``failures`` refusals."""

    failures: int = 0
    sent: list[OutgoingMessage] = field(default_factory=list)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("the broker is unreachable")
        self.sent.extend(messages)

    async def count(self) -> int:
        return len(self.sent)


def waiting_long(settings: ServiceSettings, **changes: Any) -> ServiceSettings:
    """No poll for 30 s: what the relay does next, it does because it was woken."""
    return settings.model_copy(
        update={"relay_poll_min_seconds": 30.0, "relay_poll_interval_seconds": 30.0} | changes
    )


def counted_relay(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> tuple[OutboxRelay, CountingPool, Broker]:
    """A relay whose statements are recorded, publishing to a fake broker."""
    counting, broker = CountingPool(pool), Broker()
    relay = OutboxRelay(settings, cast(asyncpg.Pool, counting), cast(Producer, broker))
    return relay, counting, broker


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: asyncio.sleep(0, relay.is_leader), bool, timeout=10)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_relay_publishes_each_aggregate_in_sequence_order_and_empties_the_outbox(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    keys = [unique("agg") for _ in range(3)]
    for _ in range(4):
        for key in keys:
            await write_event(pool, settings.service_name, key)
    since = await end_offsets("orders")
    producer = Producer(settings)
    relay = OutboxRelay(settings, pool, producer)
    try:
        while await relay.publish_batch():  # the pass that finds nothing deletes the last batch
            pass
        records = await read_records(
            "orders",
            since,
            lambda rs: sum(len(v) for v in sequences_by_key(rs, set(keys)).values()) >= 12,
        )
    finally:
        await producer.close()
    assert sequences_by_key(records, set(keys)) == {key: [1, 2, 3, 4] for key in keys}
    assert await outbox_count(pool) == 0


async def test_a_row_whose_transaction_commits_late_is_still_published(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    late, early = unique("late"), unique("early")
    since = await end_offsets("orders")
    producer = Producer(settings)
    relay = OutboxRelay(settings, pool, producer)
    slow = PostgresUnitOfWork(pool, settings.service_name)
    try:
        await slow.__aenter__()
        event = OrderRejected(order_id=uuid4(), reason="late")
        await slow.outbox.append(event, aggregate_id=late)
        await slow.outbox.write()  # stored: a lower outbox id, not yet committed
        await write_event(pool, settings.service_name, early)  # higher id, commits first
        assert await relay.publish_batch() == 1
        await slow.commit()  # a relay with a "highest id seen" cursor would now skip it
        assert await relay.publish_batch() == 1
        records = await read_records(
            "orders",
            since,
            lambda rs: len(sequences_by_key(rs, {late, early})) == 2,
        )
    finally:
        await producer.close()
    assert sequences_by_key(records, {late, early}) == {late: [1], early: [1]}


async def test_one_of_two_relays_leads_and_the_other_takes_over_when_it_dies(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    producer = Producer(settings)
    relays = [OutboxRelay(settings, pool, producer) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        leaders = await eventually(
            lambda: asyncio.sleep(0, [r for r in relays if r.is_leader]), lambda ls: len(ls) == 1
        )
        await asyncio.sleep(1.5)  # long enough for the standby to have tried and failed
        assert sum(r.is_leader for r in relays) == 1
        await write_event(pool, settings.service_name, unique("agg"))
        await eventually(lambda: outbox_count(pool), lambda n: n == 0, timeout=10)

        leader = relays.index(leaders[0])
        tasks[leader].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[leader]
        standby = relays[1 - leader]
        await eventually(lambda: asyncio.sleep(0, standby.is_leader), bool, timeout=10)
        await write_event(pool, settings.service_name, unique("agg"))
        await eventually(lambda: outbox_count(pool), lambda n: n == 0, timeout=10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.close()


async def test_a_row_is_stamped_when_it_is_written_not_when_its_transaction_began(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """The relay's latency (``outbox_write_to_ack_seconds``) is read from this stamp, so a
    slow writer's transaction does not count as the relay's time."""
    key = unique("slow-writer")
    async with PostgresUnitOfWork(pool, settings.service_name) as uow:
        began = await uow.conn.fetchval("SELECT now()")
        await asyncio.sleep(0.3)
        thing = Thing(key)
        thing.record(OrderRejected(order_id=uuid4(), reason=key))
        uow.track(thing)
        await uow.commit()
    stamped = await pool.fetchval(
        "DELETE FROM outbox WHERE message_key = $1 RETURNING created_at", key
    )
    assert (stamped - began).total_seconds() >= 0.3


async def test_each_pass_is_one_statement_that_deletes_what_the_previous_pass_published(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    for _ in range(3):
        await write_event(pool, settings.service_name, unique("agg"))
    relay, counting, _ = counted_relay(pool, settings)
    assert await relay.publish_batch() == 3
    assert await outbox_count(pool) == 3  # acknowledged, deleted by the next pass
    await write_event(pool, settings.service_name, unique("agg"))
    assert await relay.publish_batch() == 1  # the new row only: the three are not read again
    assert await outbox_count(pool) == 1
    assert await relay.publish_batch() == 0
    assert await outbox_count(pool) == 0
    assert len(counting.statements) == 3


async def test_a_batch_the_broker_did_not_acknowledge_is_not_deleted(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    await write_event(pool, settings.service_name, unique("agg"))
    broker = Broker(failures=2)
    relay = OutboxRelay(settings, pool, cast(Producer, broker))
    for _ in range(2):
        with pytest.raises(KafkaConnectionError):
            await relay.publish_batch()  # the second pass reads the row again
    await relay.delete_published()
    assert await outbox_count(pool) == 1
    assert await relay.publish_batch() == 1
    assert len(broker.sent) == 1
    await relay.delete_published()
    assert await outbox_count(pool) == 0


async def test_a_stopping_relay_deletes_the_rows_it_published(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    broker = Broker()
    relay = OutboxRelay(waiting_long(settings), pool, cast(Producer, broker))
    async with running(relay):
        await write_event(pool, settings.service_name, unique("agg"))
        relay.wake()
        await eventually(broker.count, lambda n: n == 1)
        assert await outbox_count(pool) == 1  # acknowledged; the next pass is 30 s away
    assert await outbox_count(pool) == 0


async def test_a_woken_relay_lingers_only_while_rows_keep_coming(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    linger = 0.5
    relay, counting, broker = counted_relay(
        pool, waiting_long(settings, relay_linger_seconds=linger)
    )
    async with running(relay):
        await eventually(lambda: asyncio.sleep(0, len(counting.reads)), lambda n: n == 1)
        await write_event(pool, settings.service_name, unique("lone"))
        woken = time.monotonic()
        relay.wake()
        await eventually(broker.count, lambda n: n == 1)
        assert counting.reads[1].at - woken < linger / 2  # after an idle pass: at once

        await write_event(pool, settings.service_name, unique("next"))
        woken = time.monotonic()
        relay.wake()
        await eventually(broker.count, lambda n: n == 2)
        assert counting.reads[2].at - woken >= linger  # the previous pass published


async def test_after_a_full_batch_the_relay_reads_the_next_without_lingering(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    linger = 0.5
    relay, counting, broker = counted_relay(
        pool, waiting_long(settings, relay_linger_seconds=linger, relay_batch_size=1)
    )
    async with running(relay):
        await eventually(lambda: asyncio.sleep(0, len(counting.reads)), lambda n: n == 1)
        for _ in range(2):
            await write_event(pool, settings.service_name, unique("agg"))
        relay.wake()
        await eventually(broker.count, lambda n: n == 2)
    full, next_one = counting.reads[1:3]
    assert (full.rows, next_one.rows) == (1, 1)
    assert next_one.at - full.at < linger / 2
