"""The outbox relay against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from uuid import uuid4

import asyncpg
from aiokafka import ConsumerRecord

from shared.contracts.catalog import OrderRejected
from shared.kafka import Producer
from shared.persistence.postgres import PostgresUnitOfWork
from shared.service.settings import ServiceSettings
from shared.testing.infra import end_offsets, eventually, read_records, unique
from shared.writing.aggregate import Aggregate
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
        while await relay.publish_batch():
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
