"""What a commit costs the outbox and the debounce hold against real PostgreSQL, in
statements: one for the events of new aggregates, two otherwise; one for every hold of the
transaction. And the one-statement path stays all or nothing when its guess is wrong."""

from __future__ import annotations

import asyncio
from typing import Any, cast
from uuid import uuid4

import asyncpg
import pytest

from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import parse_envelope
from shared.persistence.postgres import PostgresOutbox, PostgresPendingEvents, PostgresUnitOfWork
from shared.testing.infra import eventually
from shared.testing.worker import AddressEdited, Item
from shared.writing.aggregate import Aggregate, ConcurrencyError


class Thing(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


class CountingConnection:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements = 0

    async def fetch(self, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self._conn.fetch(*args)

    async def fetchrow(self, *args: Any) -> asyncpg.Record | None:
        self.statements += 1
        return await self._conn.fetchrow(*args)

    async def execute(self, *args: Any) -> str:
        self.statements += 1
        return await self._conn.execute(*args)


class CountingUnitOfWork(PostgresUnitOfWork):
    """Its outbox and debounce hold count the statements they send."""

    async def _begin(self) -> None:
        await super()._begin()
        self.counting = CountingConnection(self.conn)
        conn = cast(asyncpg.Connection, self.counting)
        self.outbox = PostgresOutbox(conn, "svc")
        self.pending = PostgresPendingEvents(conn, "svc")


def rejected() -> OrderRejected:
    return OrderRejected(order_id=uuid4(), reason="r")


async def commit_things(pool: asyncpg.Pool, **new: bool) -> int:
    """Two events each for the things named, added (``True``) or loaded; the statements
    the commit sent."""
    async with CountingUnitOfWork(pool, "svc") as uow:
        for aggregate_id, added in new.items():
            thing = Thing(aggregate_id)
            thing.record(rejected())
            thing.record(rejected())
            uow.track(thing, new=added)
        await uow.commit()
    return uow.counting.statements


async def sequences(pool: asyncpg.Pool) -> list[tuple[str, int]]:
    rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
    envelopes = [parse_envelope(bytes(r["value"])) for r in rows]
    return [(e.aggregate_id, e.sequence) for e in envelopes]


async def test_the_events_of_new_aggregates_are_written_in_one_statement(
    pool: asyncpg.Pool,
) -> None:
    assert await commit_things(pool, a=True, b=True) == 1
    assert await sequences(pool) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    last = await pool.fetch(
        "SELECT aggregate_id, last_sequence FROM outbox_sequences ORDER BY aggregate_id"
    )
    assert [(r["aggregate_id"], r["last_sequence"]) for r in last] == [("a", 2), ("b", 2)]


async def test_the_events_of_existing_aggregates_take_two_statements(pool: asyncpg.Pool) -> None:
    await commit_things(pool, a=True)
    assert await commit_things(pool, a=False) == 2
    assert await commit_things(pool, a=False, b=True) == 2  # one not new is enough
    assert await sequences(pool) == [
        ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("a", 6), ("b", 1), ("b", 2),
    ]  # fmt: skip


async def test_a_new_aggregate_that_has_a_stream_costs_one_statement_more_and_stores_once(
    pool: asyncpg.Pool,
) -> None:
    await commit_things(pool, a=False)
    assert await commit_things(pool, b=True, a=True) == 3  # nothing stored, then two
    assert await sequences(pool) == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 3), ("a", 4)]


async def test_a_first_sequence_taken_meanwhile_is_a_concurrency_error_and_the_retry_goes_on(
    pool: asyncpg.Pool,
) -> None:
    """The guard saw no stream for b, but another transaction was giving b its first
    sequence: the insert waits for it, then skips b. Committing a's sequence alone would
    leave the unit of work's events half numbered, so it fails, to be retried."""

    async def waiting_on_a_lock() -> int:
        count: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return count

    async with PostgresUnitOfWork(pool, "svc") as other:
        await other.outbox.append(rejected(), aggregate_id="b")
        await other.outbox.write()  # b's sequence row, not committed yet
        async with CountingUnitOfWork(pool, "svc") as uow:
            for aggregate_id in ("a", "b"):
                await uow.outbox.append(rejected(), aggregate_id=aggregate_id, new_aggregate=True)
            committing = asyncio.create_task(uow.commit())
            await eventually(waiting_on_a_lock, lambda n: n == 1, timeout=10, interval=0.05)
            await other.commit()
            with pytest.raises(ConcurrencyError):
                await committing
    assert await commit_things(pool, a=True, b=True) == 3
    assert await sequences(pool) == [("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3)]


async def test_every_hold_of_a_transaction_is_written_in_one_statement(
    pool: asyncpg.Pool,
) -> None:
    first, second = uuid4(), uuid4()
    async with CountingUnitOfWork(pool, "svc") as uow:
        for order_id, line1 in [(first, "a1"), (second, "b1"), (first, "a2"), (first, "a3")]:
            item = Item(str(order_id))
            item.record(AddressEdited(order_id=order_id, line1=line1))
            uow.track(item)
            await uow.flush()
        await uow.commit()
    assert uow.counting.statements == 1
    rows = await pool.fetch(
        "SELECT aggregate_id, payload->'shipping_address'->>'line1' AS line1, changes"
        " FROM debounced_events ORDER BY changes DESC"
    )
    assert [tuple(r) for r in rows] == [(str(first), "a3", 3), (str(second), "b1", 1)]


async def test_a_burst_keeps_the_time_of_its_first_change_and_moves_that_of_its_last(
    pool: asyncpg.Pool,
) -> None:
    order_id = uuid4()

    async def edit(line1: str) -> asyncpg.Record:
        async with PostgresUnitOfWork(pool, "svc") as uow:
            item = Item(str(order_id))
            item.record(AddressEdited(order_id=order_id, line1=line1))
            uow.track(item)
            await uow.commit()
        times = await pool.fetchrow("SELECT first_at, last_at FROM debounced_events")
        assert times is not None
        return times

    first, second = await edit("a1"), await edit("a2")
    assert second["first_at"] == first["first_at"]
    assert second["last_at"] > first["last_at"]
