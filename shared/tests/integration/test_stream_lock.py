"""Two transactions on one stream at once, as when a member expelled by a session timeout is
still applying a partition its successor has begun on (real PostgreSQL): the second waits on
the stream's row lock and, once it holds it, sees what the first parked meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast
from uuid import uuid4

import asyncpg
import pytest

from shared.consuming.inbox import ParkedEvent, Stream
from shared.consuming.processing import Delivery, EventProcessor
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import Envelope, new_envelope
from shared.persistence.postgres import PostgresInbox, PostgresUnitOfWork
from shared.testing.infra import eventually, unique
from shared.testing.statements import CountingConnection
from shared.testing.worker import APPLIED_TABLE, router

CONSUMER = "shipping"


def event(aggregate_id: str, sequence: int) -> Envelope:
    return new_envelope(
        OrderRejected(order_id=uuid4(), reason=f"r{sequence}"),
        source="order",
        aggregate_id=aggregate_id,
        sequence=sequence,
        correlation_id=unique("corr"),
        causation_id=None,
    )


async def someone_waits_on(pool: asyncpg.Pool, holder: asyncpg.Connection) -> bool:
    waiting = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        holder.get_server_pid(),
    )
    return bool(waiting)


@contextlib.asynccontextmanager
async def parking_meanwhile(
    pool: asyncpg.Pool, parked: Envelope, waiter: Callable[[], Awaitable[object]]
) -> AsyncIterator[asyncio.Task[object]]:
    """The other owner takes the stream's lock and parks ``parked``; ``waiter`` starts and,
    once it waits for that lock, the other owner commits. Yields the waiter's task."""
    async with pool.acquire() as holder:
        conn = cast(asyncpg.Connection, holder)
        async with conn.transaction():
            inbox = PostgresInbox(conn, CONSUMER)
            await inbox.lock_stream(parked.stream)
            await inbox.park(ParkedEvent(parked, "orders", 0, parked.sequence, {}))
            waiting = asyncio.ensure_future(waiter())
            try:
                await eventually(
                    lambda: someone_waits_on(pool, conn),
                    lambda blocked: blocked or waiting.done(),
                    timeout=5,
                    interval=0.05,
                )
                assert not waiting.done(), "it did not wait for the stream's lock"
            except BaseException:
                waiting.cancel()
                raise
    try:
        yield waiting
    finally:
        await asyncio.gather(waiting, return_exceptions=True)


async def sees_parked_by_lock_stream(inbox: PostgresInbox, stream: Stream) -> bool:
    return (await inbox.lock_stream(stream)).has_parked


async def sees_parked_by_lock_streams(inbox: PostgresInbox, stream: Stream) -> bool:
    return (await inbox.lock_streams([stream]))[stream].has_parked


async def sees_parked_by_pass_over(inbox: PostgresInbox, stream: Stream) -> bool:
    return not await inbox.pass_over(stream, 2)  # the next one, but its successor waits


@pytest.mark.parametrize(
    "sees_parked",
    [sees_parked_by_lock_stream, sees_parked_by_lock_streams, sees_parked_by_pass_over],
    ids=["lock_stream", "lock_streams", "pass_over"],
)
async def test_a_transaction_that_waited_for_the_stream_lock_sees_what_was_parked_meanwhile(
    pool: asyncpg.Pool, sees_parked: Callable[[PostgresInbox, Stream], Awaitable[bool]]
) -> None:
    third = event(unique("order"), 3)
    async with pool.acquire() as setup:
        await PostgresInbox(cast(asyncpg.Connection, setup), CONSUMER).advance(third.stream, 1)
    async with pool.acquire() as waiter:
        conn = cast(asyncpg.Connection, waiter)
        async with conn.transaction():

            async def look() -> bool:
                return await sees_parked(PostgresInbox(conn, CONSUMER), third.stream)

            async with parking_meanwhile(pool, third, look) as looking:
                assert await looking, "sequence 3, parked while it waited, went unseen"


@pytest.mark.parametrize("batch", [False, True], ids=["one event", "batch"])
async def test_the_event_that_fills_a_gap_applies_the_successor_parked_while_it_waited(
    pool: asyncpg.Pool, batch: bool
) -> None:
    await pool.execute(APPLIED_TABLE)
    key = unique("order")
    first, second, third = (event(key, n) for n in (1, 2, 3))
    processor = EventProcessor(router, lambda: PostgresUnitOfWork(pool, CONSUMER))
    await processor.process(Delivery(first))

    async def apply_second() -> object:
        if batch:
            return await processor.process_batch([Delivery(second)])
        return await processor.process(Delivery(second))

    async with parking_meanwhile(pool, third, apply_second) as applying:
        await applying
    reasons = [r["reason"] for r in await pool.fetch("SELECT reason FROM applied ORDER BY id")]
    assert reasons == ["r1", "r2", "r3"]
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0


async def parked_count(pool: asyncpg.Pool, stream: Stream) -> int:
    count: int = await pool.fetchval(
        "SELECT parked FROM consumer_sequences WHERE consumer = $1 AND source = $2"
        " AND aggregate_type = $3 AND aggregate_id = $4",
        CONSUMER,
        *stream,
    )
    return count


async def test_the_streams_parked_count_goes_up_once_per_event_parked_and_down_as_each_leaves(
    pool: asyncpg.Pool,
) -> None:
    key = unique("order")
    third, fourth = event(key, 3), event(key, 4)
    stream = third.stream
    async with pool.acquire() as conn:
        inbox = PostgresInbox(cast(asyncpg.Connection, conn), CONSUMER)
        await inbox.park(ParkedEvent(third, "orders", 0, 3, {}))  # no row for the stream yet
        assert await parked_count(pool, stream) == 1
        await inbox.park(ParkedEvent(third, "orders", 0, 3, {}))  # parked already
        assert await parked_count(pool, stream) == 1
        await inbox.park(ParkedEvent(fourth, "orders", 0, 4, {}))
        assert await parked_count(pool, stream) == 2
        assert await inbox.unpark(stream, 3) is not None
        assert await parked_count(pool, stream) == 1
        assert await inbox.unpark(stream, 3) is None  # gone already
        assert await parked_count(pool, stream) == 1
        assert (await inbox.lock_stream(stream)).has_parked
        assert await inbox.unpark(stream, 4) is not None
        assert await parked_count(pool, stream) == 0
        assert not (await inbox.lock_stream(stream)).has_parked


@pytest.mark.parametrize(
    "sees_parked",
    [sees_parked_by_lock_stream, sees_parked_by_lock_streams, sees_parked_by_pass_over],
    ids=["lock_stream", "lock_streams", "pass_over"],
)
async def test_locking_a_stream_and_learning_what_is_parked_is_one_statement(
    pool: asyncpg.Pool, sees_parked: Callable[[PostgresInbox, Stream], Awaitable[bool]]
) -> None:
    parked = event(unique("order"), 3)
    async with pool.acquire() as setup:
        inbox = PostgresInbox(cast(asyncpg.Connection, setup), CONSUMER)
        await inbox.advance(parked.stream, 1)
        await inbox.park(ParkedEvent(parked, "orders", 0, 3, {}))
    async with pool.acquire() as conn:
        counting = CountingConnection(cast(asyncpg.Connection, conn))
        inbox = PostgresInbox(cast(asyncpg.Connection, counting), CONSUMER)
        assert await sees_parked(inbox, parked.stream)
    assert counting.statements == 1
