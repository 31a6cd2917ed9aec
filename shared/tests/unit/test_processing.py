"""The consumer's core over the in-memory unit of work: dedup, sequence check, parking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.consuming.processing import (
    Dedup,
    Delivery,
    EventObservation,
    EventProcessor,
    Outcome,
    PermanentError,
    SequenceCheck,
)
from shared.consuming.routing import Router
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import OrderCancelled, OrderRejected
from shared.contracts.envelope import Envelope, new_envelope
from shared.pitfalls.no_dedup import NoDedup
from shared.pitfalls.no_sequence_check import NoSequenceCheck
from shared.testing.fakes import InMemoryState, InMemoryUnitOfWork

router = Router[InMemoryUnitOfWork]()


@router.subscriber(OrderRejected)
async def when_order_rejected_note_it(event: OrderRejected, uow: InMemoryUnitOfWork) -> None:
    uow.table("applied").setdefault("log", []).append(event.reason)


def stream_of(n: int, aggregate_id: str = "order-1") -> list[Envelope]:
    return [
        new_envelope(
            OrderRejected(order_id=uuid4(), reason=f"r{i}"),
            source="order",
            aggregate_id=aggregate_id,
            sequence=i,
            correlation_id="c",
            causation_id=None,
        )
        for i in range(1, n + 1)
    ]


def unhandled(aggregate_id: str) -> Envelope:
    """The first event of a stream, of a type the test router has no handler for."""
    return new_envelope(
        OrderCancelled(order_id=uuid4(), reason="x"),
        source="order",
        aggregate_id=aggregate_id,
        sequence=1,
        correlation_id="c",
        causation_id=None,
    )


def processor(
    state: InMemoryState, dedup: Dedup = Dedup(), sequence_check: SequenceCheck = SequenceCheck()
) -> EventProcessor[InMemoryUnitOfWork]:
    return EventProcessor(
        router,
        lambda: InMemoryUnitOfWork(state, "test"),
        dedup=dedup,
        sequence_check=sequence_check,
    )


def applied(state: InMemoryState) -> list[str]:
    return list(state.tables.get("applied", {}).get("log", []))


async def deliver_all(
    proc: EventProcessor[InMemoryUnitOfWork], envelopes: list[Envelope]
) -> list[Outcome]:
    return [await proc.process(Delivery(e)) for e in envelopes]


async def test_events_in_order_are_each_applied_once() -> None:
    state = InMemoryState()
    outcomes = await deliver_all(processor(state), stream_of(3))
    assert outcomes == [Outcome.APPLIED] * 3
    assert applied(state) == ["r1", "r2", "r3"]


async def test_the_same_event_delivered_twice_is_applied_once() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    outcomes = await deliver_all(processor(state), [e1, e1, e2, e2])
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE, Outcome.APPLIED, Outcome.DUPLICATE]
    assert applied(state) == ["r1", "r2"]


async def test_without_dedup_and_sequence_check_a_redelivery_is_applied_twice() -> None:
    state = InMemoryState()
    (e1,) = stream_of(1)
    await deliver_all(processor(state, NoDedup(), NoSequenceCheck()), [e1, e1])
    assert applied(state) == ["r1", "r1"]  # the pitfall the protections prevent


async def test_an_event_ahead_of_a_gap_is_parked_then_applied_when_the_gap_fills() -> None:
    state = InMemoryState()
    e1, e2, e3 = stream_of(3)
    proc = processor(state)
    assert await deliver_all(proc, [e3, e1]) == [Outcome.PARKED, Outcome.APPLIED]
    assert applied(state) == ["r1"]
    assert await proc.process(Delivery(e2)) is Outcome.APPLIED
    assert applied(state) == ["r1", "r2", "r3"]
    assert state.inbox.parked == {}


async def test_without_the_sequence_check_a_late_event_overwrites_a_newer_one() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    await deliver_all(processor(state, sequence_check=NoSequenceCheck()), [e2, e1])
    assert applied(state) == ["r2", "r1"]  # stale r1 applied last: the pitfall


async def test_a_stale_event_with_a_new_id_is_skipped_by_its_sequence() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    proc = processor(state)
    await deliver_all(proc, [e1, e2])
    replayed = e1.model_copy(update={"event_id": uuid4()})
    assert await proc.process(Delivery(replayed)) is Outcome.DUPLICATE
    assert applied(state) == ["r1", "r2"]


async def test_events_without_a_handler_still_advance_their_stream() -> None:
    state = InMemoryState()
    first = unhandled("order-1")
    second = stream_of(2)[1]
    outcomes = await deliver_all(processor(state), [first, second])
    assert outcomes == [Outcome.IGNORED, Outcome.APPLIED]


async def test_a_handled_event_with_an_unknown_version_is_permanent_and_writes_nothing() -> None:
    state = InMemoryState()
    e1 = stream_of(1)[0]  # a version from a producer ahead of us, that v1 cannot read
    bad = e1.model_copy(update={"schema_version": 99, "payload": {"order_id": str(uuid4())}})
    with pytest.raises(PermanentError, match="OrderRejected v99 is newer than v1"):
        await processor(state).process(Delivery(bad))
    assert state.inbox.processed == set()


async def test_a_failing_handler_rolls_back_the_dedup_row_so_a_retry_applies_it() -> None:
    failing = Router[InMemoryUnitOfWork]()
    calls: list[UUID] = []

    @failing.subscriber(OrderRejected)
    async def when_order_rejected_fail_once(event: OrderRejected, uow: InMemoryUnitOfWork) -> None:
        calls.append(event.order_id)
        uow.table("applied").setdefault("log", []).append(event.reason)
        if len(calls) == 1:
            raise RuntimeError("transient")

    state = InMemoryState()
    proc = EventProcessor(failing, lambda: InMemoryUnitOfWork(state, "test"))
    (e1,) = stream_of(1)
    with pytest.raises(RuntimeError):
        await proc.process(Delivery(e1))
    assert applied(state) == []
    assert await proc.process(Delivery(e1)) is Outcome.APPLIED
    assert applied(state) == ["r1"]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.permutations(list(range(n))),
            st.lists(st.integers(min_value=0, max_value=n - 1), max_size=6),
        )
    )
)
def test_any_interleaving_of_duplicates_and_reorderings_applies_each_event_once_in_order(
    case: tuple[int, list[int], list[int]],
) -> None:
    n, order, duplicates = case
    envelopes = stream_of(n)
    deliveries = [envelopes[i] for i in order]
    # duplicates are re-sent at random points, as a broker or producer retry would
    for k, i in enumerate(duplicates):
        deliveries.insert((k * 7) % (len(deliveries) + 1), envelopes[i])
    state = InMemoryState()
    asyncio.run(deliver_all(processor(state), deliveries))
    assert applied(state) == [f"r{i}" for i in range(1, n + 1)]
    assert state.inbox.parked == {}


async def test_streams_of_different_aggregates_do_not_wait_for_each_other() -> None:
    state = InMemoryState()
    a = stream_of(2, "order-a")
    b = stream_of(1, "order-b")
    outcomes = await deliver_all(processor(state), [a[1], b[0]])
    assert outcomes == [Outcome.PARKED, Outcome.APPLIED]


async def test_a_parked_successor_that_fails_stays_parked_and_does_not_sink_the_gap_filler() -> (
    None
):
    picky = Router[InMemoryUnitOfWork]()

    @picky.subscriber(OrderRejected)
    async def when_order_rejected_refuse_r2(event: OrderRejected, uow: InMemoryUnitOfWork) -> None:
        if event.reason == "r2":
            raise RuntimeError("a bug that only r2 triggers")
        uow.table("applied").setdefault("log", []).append(event.reason)

    state = InMemoryState()
    proc = EventProcessor(picky, lambda: InMemoryUnitOfWork(state, "test"))
    e1, e2 = stream_of(2)
    assert await proc.process(Delivery(e2)) is Outcome.PARKED
    assert await proc.process(Delivery(e1)) is Outcome.APPLIED  # not dead-lettered for e2
    assert applied(state) == ["r1"]
    assert list(state.inbox.parked) == [(e2.stream, 2)]  # left for the gap timeout


class Recorder(EventObservation):
    def __init__(self, log: list[str], delivery: Delivery) -> None:
        self._log = log
        self._reason = delivery.envelope.payload["reason"]

    def done(self, outcome: Outcome) -> None:
        self._log.append(f"{self._reason}:{outcome.value}")

    def undone(self, reason: str) -> None:
        self._log.append(f"{self._reason}:undone")


class CountingUnitOfWork(InMemoryUnitOfWork):
    commits = 0

    async def _commit(self) -> None:
        CountingUnitOfWork.commits += 1
        await super()._commit()


async def test_a_batch_applies_its_events_in_order_in_one_commit_and_observes_each() -> None:
    state = InMemoryState()
    CountingUnitOfWork.commits = 0
    proc = EventProcessor(router, lambda: CountingUnitOfWork(state, "test"))
    e1, e2, e3 = stream_of(3)
    seen: list[str] = []
    outcomes = await proc.process_batch(
        [Delivery(e2), Delivery(e1), Delivery(e3), Delivery(e1)],
        lambda d: Recorder(seen, d),
    )
    assert outcomes == [Outcome.PARKED, Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE]
    assert applied(state) == ["r1", "r2", "r3"]  # e2 parked, then unparked by e1
    assert CountingUnitOfWork.commits == 1
    assert seen == ["r2:parked", "r1:applied", "r3:applied", "r1:duplicate"]


async def test_a_batch_runs_the_preparer_first_with_the_payloads_the_service_handles() -> None:
    preparing = Router[InMemoryUnitOfWork]()
    calls: list[str] = []

    @preparing.subscriber(OrderRejected)
    async def when_order_rejected_note_it(event: OrderRejected, uow: InMemoryUnitOfWork) -> None:
        calls.append(f"handle {event.reason}")

    @preparing.batch_preparer
    async def note_the_batch(events: Sequence[IntegrationEvent], uow: InMemoryUnitOfWork) -> None:
        calls.append("prepare " + ",".join(type(e).__name__ for e in events))

    proc = EventProcessor(preparing, lambda: InMemoryUnitOfWork(InMemoryState(), "test"))
    e1, e2 = stream_of(2)
    ignored = unhandled("order-2")
    await proc.process_batch([Delivery(e1), Delivery(ignored), Delivery(e2)])
    assert calls == ["prepare OrderRejected,OrderRejected", "handle r1", "handle r2"]
    # One event alone, in its own transaction, needs no preparing.
    (e3,) = stream_of(1, aggregate_id="order-3")
    await proc.process(Delivery(e3))
    assert calls[-1] == "handle r1"
    with pytest.raises(ValueError, match="already has a batch preparer"):
        preparing.batch_preparer(note_the_batch)


async def test_a_batch_with_one_failing_event_commits_none_of_them() -> None:
    picky = Router[InMemoryUnitOfWork]()

    @picky.subscriber(OrderRejected)
    async def when_order_rejected_refuse_r2(event: OrderRejected, uow: InMemoryUnitOfWork) -> None:
        if event.reason == "r2":
            raise RuntimeError("a bug that only r2 triggers")
        uow.table("applied").setdefault("log", []).append(event.reason)

    state = InMemoryState()
    proc = EventProcessor(picky, lambda: InMemoryUnitOfWork(state, "test"))
    e1, e2, e3 = stream_of(3)
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="only r2"):
        await proc.process_batch(
            [Delivery(e1), Delivery(e2), Delivery(e3)], lambda d: Recorder(seen, d)
        )
    assert applied(state) == []
    assert state.inbox.sequences == {}
    assert seen == ["r1:undone", "r2:undone"]  # e3 was never reached
    # One at a time, as the consumer falls back to, e1 goes through and e2 is isolated.
    assert await proc.process(Delivery(e1)) is Outcome.APPLIED
    with pytest.raises(RuntimeError):
        await proc.process(Delivery(e2))
    assert applied(state) == ["r1"]


async def test_a_poison_payload_fails_a_batch_before_anything_is_written() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    bad = e2.model_copy(update={"payload": {"order_id": "not a uuid", "reason": "r"}})
    with pytest.raises(PermanentError, match="OrderRejected v1"):
        await processor(state).process_batch([Delivery(e1), Delivery(bad)])
    assert applied(state) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(min_value=1, max_value=4)),
        min_size=1,
        max_size=10,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_a_batch_ends_where_the_same_events_one_at_a_time_end(
    picks: list[tuple[str, int]], batch_size: int
) -> None:
    """Planned batches (and the event-by-event path, for a gap) against the lone-event path:
    the same events applied, the same positions, the same parked events."""
    streams = {aggregate_id: stream_of(4, f"order-{aggregate_id}") for aggregate_id in "ab"}
    deliveries = [Delivery(streams[a][seq - 1]) for a, seq in picks]

    async def run() -> tuple[InMemoryState, InMemoryState]:
        alone, batched = InMemoryState(), InMemoryState()
        await deliver_all(processor(alone), [d.envelope for d in deliveries])
        for i in range(0, len(deliveries), batch_size):
            await processor(batched).process_batch(deliveries[i : i + batch_size])
        return alone, batched

    alone, batched = asyncio.run(run())
    assert applied(batched) == applied(alone)
    assert batched.inbox.sequences == alone.inbox.sequences
    assert batched.inbox.parked.keys() == alone.inbox.parked.keys()


async def test_a_batch_whose_next_event_was_marked_applied_rolls_back_for_one_at_a_time() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    state.inbox.processed.add(e1.event_id)  # applied, yet its stream's position was lost
    seen: list[str] = []
    with pytest.raises(Exception, match="marked applied already"):
        await processor(state).process_batch(
            [Delivery(e1), Delivery(e2)], lambda d: Recorder(seen, d)
        )
    # Dedup is checked as the batch ends: the handlers ran, and were rolled back.
    assert seen == ["r1:undone", "r2:undone"]
    assert applied(state) == []
    assert state.inbox.sequences == {}
    assert state.inbox.processed == {e1.event_id}
    assert await processor(state).process(Delivery(e1)) is Outcome.DUPLICATE


async def test_a_batch_marks_the_events_it_applied_as_its_streams_advance() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    ignored = unhandled("order-2")
    outcomes = await processor(state).process_batch(
        [Delivery(e1), Delivery(ignored), Delivery(e2), Delivery(e1)]
    )
    assert outcomes == [Outcome.APPLIED, Outcome.IGNORED, Outcome.APPLIED, Outcome.DUPLICATE]
    assert state.inbox.processed == {e1.event_id, e2.event_id}
    assert state.inbox.sequences == {e2.stream: 2, ignored.stream: 1}


async def test_without_dedup_a_batch_applies_again_an_event_whose_position_was_lost() -> None:
    state = InMemoryState()
    e1, e2 = stream_of(2)
    await processor(state, NoDedup()).process_batch([Delivery(e1)])
    assert state.inbox.processed == set()  # no dedup row written
    state.inbox.sequences.clear()  # the stream's position lost, say to a restore
    await processor(state, NoDedup()).process_batch([Delivery(e1), Delivery(e2)])
    assert applied(state) == ["r1", "r1", "r2"]  # the pitfall dedup prevents
    assert state.inbox.sequences == {e1.stream: 2}
