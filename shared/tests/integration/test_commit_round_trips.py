"""What a commit costs the outbox and the debounce hold against real PostgreSQL, in
statements: one for the events of new aggregates and of aggregates whose last sequence this
process committed, two for others; one for every hold of the transaction. And the
one-statement path stays all or nothing when its guess is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast
from uuid import uuid4

import asyncpg
import pytest

from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import parse_envelope
from shared.persistence.postgres import PostgresOutbox, PostgresPendingEvents, PostgresUnitOfWork
from shared.testing.infra import eventually
from shared.testing.statements import CountingConnection
from shared.testing.worker import AddressEdited, Item
from shared.writing.aggregate import Aggregate, ConcurrencyError
from shared.writing.outbox import LastSequences


@pytest.fixture(autouse=True)
def a_new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a process that remembers no sequence (its database is new)."""
    monkeypatch.setattr(PostgresOutbox, "known", LastSequences())


class Thing(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


class CountingUnitOfWork(PostgresUnitOfWork):
    """Its outbox and debounce hold count the statements they send."""

    async def _begin(self) -> None:
        await super()._begin()
        self.counting = CountingConnection(self.conn)
        conn = cast(asyncpg.Connection, self.counting)
        self.outbox = PostgresOutbox(conn, "svc")
        self.pending = PostgresPendingEvents(conn, "svc")


def waiting_on_a_lock(pool: asyncpg.Pool) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        waiting: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiting

    return count


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


async def test_the_events_of_aggregates_this_process_wrote_last_take_one_statement(
    pool: asyncpg.Pool,
) -> None:
    await commit_things(pool, a=True)
    assert await commit_things(pool, a=False) == 1
    assert await commit_things(pool, a=False, b=True) == 1
    assert await sequences(pool) == [
        ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("a", 6), ("b", 1), ("b", 2),
    ]  # fmt: skip


async def test_the_events_of_an_aggregate_this_process_does_not_know_take_two(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await commit_things(pool, a=True)
    monkeypatch.setattr(PostgresOutbox, "known", LastSequences())  # another process
    assert await commit_things(pool, a=False) == 2
    assert await commit_things(pool, a=False) == 1  # it knows a now
    assert await sequences(pool) == [("a", n) for n in range(1, 7)]


async def test_a_sequence_another_process_moved_on_costs_one_statement_more_and_stores_once(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await commit_things(pool, a=True)  # this process: a's last sequence is 2
    ours = PostgresOutbox.known
    monkeypatch.setattr(PostgresOutbox, "known", LastSequences())
    await commit_things(pool, a=False)  # another process's write: 4
    monkeypatch.setattr(PostgresOutbox, "known", ours)
    assert await commit_things(pool, a=False) == 3  # the guess (2) stores nothing, then two
    assert await sequences(pool) == [("a", n) for n in range(1, 7)]
    assert ours.get(("order", "a")) == 6


async def test_a_sequence_moved_on_during_the_statement_is_not_overwritten(
    pool: asyncpg.Pool,
) -> None:
    """The guard saw a's last sequence as guessed (2), but another transaction was moving it
    on: the upsert waits for it, then finds 4 and takes nothing, so nothing is stored and
    the events are numbered from 5 by the fallback (without the upsert's own check they
    would have been 3 and 4 again)."""
    await commit_things(pool, a=True)
    async with PostgresUnitOfWork(pool, "svc") as other:
        for _ in range(2):
            await other.outbox.append(rejected(), aggregate_id="a")
        await other.outbox.write()  # a's sequence row at 4, not committed yet
        async with CountingUnitOfWork(pool, "svc") as uow:
            for _ in range(2):
                await uow.outbox.append(rejected(), aggregate_id="a")
            committing = asyncio.create_task(uow.commit())
            await eventually(waiting_on_a_lock(pool), lambda n: n == 1, timeout=10, interval=0.05)
            await other.commit()
            await committing
    assert uow.counting.statements == 3
    assert await sequences(pool) == [("a", n) for n in range(1, 7)]


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

    async with PostgresUnitOfWork(pool, "svc") as other:
        await other.outbox.append(rejected(), aggregate_id="b")
        await other.outbox.write()  # b's sequence row, not committed yet
        async with CountingUnitOfWork(pool, "svc") as uow:
            for aggregate_id in ("a", "b"):
                await uow.outbox.append(rejected(), aggregate_id=aggregate_id, new_aggregate=True)
            committing = asyncio.create_task(uow.commit())
            await eventually(waiting_on_a_lock(pool), lambda n: n == 1, timeout=10, interval=0.05)
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
