"""One set of cases for the outbox and inbox, run against the in-memory fake and against
real PostgreSQL, so the fake the unit tests rely on cannot drift from the real thing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from uuid import uuid4

import asyncpg
import pytest

from shared.consuming.inbox import ParkedEvent, StreamPosition
from shared.contracts.catalog import OrderRejected, StockLevelChanged
from shared.contracts.envelope import Envelope, new_envelope, parse_envelope
from shared.persistence.postgres import PostgresUnitOfWork
from shared.testing.fakes import InMemoryState, InMemoryUnitOfWork
from shared.testing.infra import create_database, drop_database
from shared.writing.aggregate import Aggregate
from shared.writing.uow import UnitOfWork

NewUow = Callable[[], UnitOfWork]
Backend = tuple[NewUow, Callable[[], object]]


class Thing(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """A unit-of-work factory, and a function returning what the outbox holds."""
    if request.param == "in_memory":
        state = InMemoryState()
        yield (lambda: InMemoryUnitOfWork(state, "svc")), (lambda: state.outbox.envelopes)
        return
    url = await create_database()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None

    async def outbox_rows() -> list[Envelope]:
        rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
        return [parse_envelope(bytes(r["value"])) for r in rows]

    try:
        yield (lambda: PostgresUnitOfWork(pool, "svc")), outbox_rows
    finally:
        await pool.close()
        await drop_database(url)


async def outbox_of(backend: Backend) -> list[Envelope]:
    read = backend[1]()
    if isinstance(read, list):
        return read
    return await read  # type: ignore[no-any-return, misc]


def rejected() -> OrderRejected:
    return OrderRejected(order_id=uuid4(), reason="r")


async def test_sequences_count_one_two_three_per_aggregate(backend: Backend) -> None:
    new_uow, _ = backend
    for aggregate_id in ["a", "b", "a", "a", "b"]:
        async with new_uow() as uow:
            thing = Thing(aggregate_id)
            thing.record(rejected())
            uow.track(thing)
            await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_id, e.sequence) for e in envelopes] == [
        ("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2),
    ]  # fmt: skip


async def test_events_of_one_unit_of_work_are_numbered_per_aggregate_in_append_order(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    async with new_uow() as uow:
        await uow.outbox.append(rejected(), aggregate_id="b")
        await uow.commit()
    async with new_uow() as uow:
        for aggregate_id in ["a", "b", "a", "c", "b", "a"]:
            await uow.outbox.append(
                OrderRejected(order_id=uuid4(), reason=aggregate_id), aggregate_id=aggregate_id
            )
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_id, e.sequence) for e in envelopes] == [
        ("b", 1), ("a", 1), ("b", 2), ("a", 2), ("c", 1), ("b", 3), ("a", 3),
    ]  # fmt: skip


async def test_aggregate_types_have_separate_sequences(backend: Backend) -> None:
    new_uow, _ = backend
    async with new_uow() as uow:
        thing = Thing("x")
        thing.record(rejected())
        thing.record(StockLevelChanged(sku="x", available=1, reserved=0, shipped=0))
        uow.track(thing)
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_type, e.sequence) for e in envelopes] == [("order", 1), ("stock", 1)]


async def test_the_events_of_new_aggregates_are_numbered_from_one_and_go_on_from_there(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    async with new_uow() as uow:
        a, b = Thing("a"), Thing("b")
        for thing in (a, b, a):
            thing.record(rejected())
        b.record(StockLevelChanged(sku="b", available=1, reserved=0, shipped=0))
        uow.track(a, new=True)
        uow.track(b, new=True)
        await uow.commit()
    async with new_uow() as uow:
        a = Thing("a")
        a.record(rejected())
        uow.track(a)
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_type, e.aggregate_id, e.sequence) for e in envelopes] == [
        ("order", "a", 1), ("order", "a", 2), ("order", "b", 1), ("stock", "b", 1),
        ("order", "a", 3),
    ]  # fmt: skip


async def test_an_aggregate_created_again_over_an_existing_stream_continues_it_with_no_gap(
    backend: Backend,
) -> None:
    """As a reservation purged by retention and re-created by a replayed event would: new
    to its repository, its stream in the outbox goes on."""
    new_uow, _ = backend
    async with new_uow() as uow:
        await uow.outbox.append(rejected(), aggregate_id="a")
        await uow.commit()
    async with new_uow() as uow:
        a, b = Thing("a"), Thing("b")
        for thing in (a, b, a):
            thing.record(rejected())
        uow.track(a, new=True)
        uow.track(b, new=True)
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_id, e.sequence) for e in envelopes] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1),
    ]  # fmt: skip
    assert len({e.event_id for e in envelopes}) == 4


async def test_new_and_existing_aggregates_in_one_unit_of_work_each_take_their_next_sequence(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    async with new_uow() as uow:
        await uow.outbox.append(rejected(), aggregate_id="old")
        await uow.commit()
    async with new_uow() as uow:
        created, old = Thing("created"), Thing("old")
        for thing in (created, old, created):
            thing.record(rejected())
        uow.track(created, new=True)
        uow.track(old)
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [(e.aggregate_id, e.sequence) for e in envelopes] == [
        ("old", 1), ("created", 1), ("created", 2), ("old", 2),
    ]  # fmt: skip


async def test_events_of_a_rolled_back_unit_of_work_are_never_published(backend: Backend) -> None:
    new_uow, _ = backend
    async with new_uow() as uow:
        thing = Thing("a")
        thing.record(rejected())
        uow.track(thing)
        await uow.outbox.append(rejected(), aggregate_id="a")
        # no commit: leaving the block rolls back
    async with new_uow() as uow:
        thing = Thing("a")
        thing.record(rejected())
        uow.track(thing)
        await uow.commit()
    envelopes = await outbox_of(backend)
    assert [e.sequence for e in envelopes] == [1]  # the rolled-back sequence is not burnt


async def test_the_inbox_remembers_applied_events_and_the_last_sequence(backend: Backend) -> None:
    new_uow, _ = backend
    envelope = new_envelope(
        rejected(), source="other", aggregate_id="a", sequence=3, correlation_id="c",
        causation_id=None,
    )  # fmt: skip
    async with new_uow() as uow:
        assert not await uow.inbox.seen(envelope.event_id)
        assert await uow.inbox.lock_stream(envelope.stream) == StreamPosition(0, False)
        assert await uow.inbox.mark_processed(envelope.event_id)
        await uow.inbox.advance(envelope.stream, envelope.sequence)
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.inbox.seen(envelope.event_id)
        assert not await uow.inbox.mark_processed(envelope.event_id)  # a duplicate
        assert (await uow.inbox.lock_stream(envelope.stream)).last_sequence == 3
        await uow.inbox.advance(envelope.stream, 2)  # never lowered
        assert (await uow.inbox.lock_stream(envelope.stream)).last_sequence == 3
        assert (await uow.inbox.lock_stream(("other", "order", "b"))).last_sequence == 0


async def test_an_inbox_record_rolled_back_is_forgotten(backend: Backend) -> None:
    new_uow, _ = backend
    envelope = new_envelope(
        rejected(), source="other", aggregate_id="a", sequence=1, correlation_id="c",
        causation_id=None,
    )  # fmt: skip
    async with new_uow() as uow:
        await uow.inbox.mark_processed(envelope.event_id)
        await uow.inbox.advance(envelope.stream, envelope.sequence)
    async with new_uow() as uow:
        assert not await uow.inbox.seen(envelope.event_id)
        assert (await uow.inbox.lock_stream(envelope.stream)).last_sequence == 0


async def test_parked_events_come_back_once_by_stream_and_sequence(backend: Backend) -> None:
    new_uow, _ = backend
    envelope = new_envelope(
        rejected(), source="other", aggregate_id="a", sequence=5, correlation_id="c",
        causation_id=None,
    )  # fmt: skip
    parked = ParkedEvent(envelope, "orders", 2, 40, {"event_type": "OrderRejected"})
    async with new_uow() as uow:
        await uow.inbox.park(parked)
        await uow.inbox.park(parked)  # parking twice is harmless
        await uow.commit()
    async with new_uow() as uow:
        assert (await uow.inbox.lock_stream(envelope.stream)).has_parked
        assert not (await uow.inbox.lock_stream(("other", "order", "b"))).has_parked
        assert await uow.inbox.unpark(envelope.stream, 4) is None
        assert await uow.inbox.unpark(envelope.stream, 5) == parked
        assert await uow.inbox.unpark(envelope.stream, 5) is None
        await uow.commit()


async def test_passing_over_an_ignored_event_advances_only_the_next_one_of_a_clear_stream(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    stream, other = ("other", "order", "a"), ("other", "order", "b")
    async with new_uow() as uow:
        assert not await uow.inbox.pass_over(stream, 1)  # a stream never seen: the slow path
        await uow.inbox.lock_stream(stream)
        assert await uow.inbox.pass_over(stream, 1)
        assert not await uow.inbox.pass_over(stream, 1)  # a duplicate
        assert not await uow.inbox.pass_over(stream, 3)  # ahead of a gap
        assert await uow.inbox.pass_over(stream, 2)
        await uow.commit()
    async with new_uow() as uow:
        assert (await uow.inbox.lock_stream(stream)).last_sequence == 2
        await uow.inbox.lock_stream(other)
        parked = new_envelope(
            rejected(), source="other", aggregate_id="b", sequence=3, correlation_id="c",
            causation_id=None,
        )  # fmt: skip
        await uow.inbox.park(ParkedEvent(parked, "orders", 0, 1, {}))
        assert not await uow.inbox.pass_over(other, 1)  # something of the stream is parked
        assert (await uow.inbox.lock_stream(other)).last_sequence == 0


async def test_failed_attempts_at_a_record_add_up_across_units_of_work_until_forgotten(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    for expected in (1, 2):
        async with new_uow() as uow:
            assert await uow.inbox.count_failure("orders", 0, 7, f"failure {expected}") == expected
            await uow.commit()
    async with new_uow() as uow:
        assert await uow.inbox.count_failure("orders", 1, 7, "another record") == 1
        # rolled back: not counted
    async with new_uow() as uow:
        await uow.inbox.forget_failures("orders", 0, 7)
        await uow.inbox.forget_failures("orders", 2, 7)  # nothing to forget: harmless
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.inbox.count_failure("orders", 0, 7, "failure again") == 1
        assert await uow.inbox.count_failure("orders", 1, 7, "another record") == 1


async def test_the_set_based_inbox_methods_do_what_their_single_forms_do(backend: Backend) -> None:
    new_uow, _ = backend
    a, b, c = (("other", "order", x) for x in "abc")
    seen, new = uuid4(), uuid4()
    async with new_uow() as uow:
        await uow.inbox.advance(a, 4)
        await uow.inbox.mark_processed(seen)
        parked = new_envelope(
            rejected(), source="other", aggregate_id="c", sequence=9, correlation_id="c",
            causation_id=None,
        )  # fmt: skip
        await uow.inbox.park(ParkedEvent(parked, "orders", 0, 1, {}))
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.inbox.lock_streams([c, a, b, a]) == {
            a: StreamPosition(4, False),
            b: StreamPosition(0, False),
            c: StreamPosition(0, True),
        }
        assert await uow.inbox.lock_streams([]) == {}
        # a is never lowered; seen was marked before, so only new comes back
        assert await uow.inbox.advance_all({a: 2, b: 7}, mark_processed=[seen, new]) == {new}
        assert await uow.inbox.advance_all({c: 1}) == set()
        assert await uow.inbox.advance_all({}) == set()
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.inbox.seen(new)
        positions = await uow.inbox.lock_streams([a, b, c])
        assert [positions[s].last_sequence for s in (a, b, c)] == [4, 7, 1]


async def test_advancing_streams_and_marking_events_roll_back_together(backend: Backend) -> None:
    new_uow, _ = backend
    stream = ("other", "order", "a")
    event_id = uuid4()
    async with new_uow() as uow:
        assert await uow.inbox.advance_all({stream: 3}, mark_processed=[event_id]) == {event_id}
        # rolled back: neither the dedup row nor the position stays
    async with new_uow() as uow:
        assert not await uow.inbox.seen(event_id)
        assert (await uow.inbox.lock_stream(stream)).last_sequence == 0
        assert await uow.inbox.advance_all({stream: 3}, mark_processed=[event_id]) == {event_id}


async def test_after_commit_callbacks_run_once_committed_and_never_after_a_rollback(
    backend: Backend,
) -> None:
    new_uow, _ = backend
    calls: list[str] = []
    async with new_uow() as uow:
        uow.after_commit(lambda: calls.append("rolled back"))
    async with new_uow() as uow:
        uow.after_commit(lambda: calls.append("committed"))
        assert calls == []
        await uow.commit()
    assert calls == ["committed"]
