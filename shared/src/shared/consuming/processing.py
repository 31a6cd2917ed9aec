"""Applying events exactly once and in order: the consumer's core, free of Kafka.

In a unit of work: skip an event already applied (dedup row) or at/below the stream's last
sequence (stale); park one that arrives ahead of a gap; otherwise apply it, record it, and
apply any parked successors it unblocks. Events the service has no handler for still advance
the stream, so a consumer that ignores some event types never waits for them.

``process`` applies one event in its own transaction; ``process_batch`` applies the events
of one poll of one partition in a single transaction (one commit, one WAL flush), and raises
if any of them fails, so the caller can fall back to ``process`` one at a time, which
isolates the failing event for its retries and dead letter.

The two protections are objects, :class:`Dedup` and :class:`SequenceCheck`: the pitfall
modes swap in the naive versions (:mod:`shared.pitfalls.no_dedup`,
:mod:`shared.pitfalls.no_sequence_check`) to show what each one prevents.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Generic
from uuid import UUID

from shared.consuming.inbox import Inbox, ParkedEvent, Stream
from shared.consuming.routing import Router, Subscription, U
from shared.contracts import IntegrationEvent, InvalidPayloadError, UnknownEventError
from shared.contracts.envelope import Envelope
from shared.faults import failpoint, raise_if_armed
from shared.observability.correlation import correlated
from shared.persistence.db import LOST_RACE_ERRORS, TRANSIENT_DATABASE_ERRORS
from shared.writing.aggregate import DomainError, NotFoundError

log = logging.getLogger(__name__)


class _SuccessorFailedError(Exception):
    def __init__(self, parked: ParkedEvent, reason: str) -> None:
        super().__init__(reason)
        self.parked = parked
        self.reason = reason


class _DedupDisagreesError(Exception):
    """A batch applied an event, next in its stream by the plan, already marked applied."""


class PermanentError(Exception):
    """Retrying cannot help: dead-letter now. Raised for an envelope or payload that does not
    decode, and for a handler's DomainError or NotFoundError (see :mod:`shared.writing.aggregate`).
    Any other exception is retried, then dead-lettered after the last attempt."""


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    PARKED = "parked"


@dataclass(frozen=True)
class Delivery:
    """An event as delivered, with where it came from (for parking and dead letters)."""

    envelope: Envelope
    topic: str = ""
    partition: int = 0
    offset: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    key: bytes | None = None  # the record's own key and value, kept as they came for a
    value: bytes | None = None  # dead letter (the envelope drops fields it does not know)
    timestamp: int | None = None  # the record's; with its offset, the dead letter's identity


class Dedup:
    """An event applied before is not applied again: its dedup row (``processed_events``)
    is written in the transaction that applies it.

    ``first_time`` writes one event's row before it is applied: False, and it is not. For a
    planned batch, ``all_first_time`` writes the rows once the events are applied, in the
    statement that advances their streams (``Inbox.advance_all``, one round trip for both):
    False when any was there already, and the batch rolls back."""

    async def first_time(self, inbox: Inbox, event_id: UUID) -> bool:
        return await inbox.mark_processed(event_id)

    async def all_first_time(
        self, inbox: Inbox, event_ids: Sequence[UUID], *, advancing: Mapping[Stream, int]
    ) -> bool:
        marked = await inbox.advance_all(advancing, mark_processed=event_ids)
        return len(marked) == len(event_ids)


@dataclass(frozen=True)
class Admission:
    """What the sequence check decided: an outcome without applying (a duplicate, parked,
    only passed over), or apply, and whether events wait parked behind this one."""

    outcome: Outcome | None = None
    has_parked: bool = False


class SequenceCheck:
    """Each stream's events are applied in order and once: an event at or below the
    stream's position is a duplicate, one ahead of a gap is parked until the gap fills."""

    async def admit(
        self, inbox: Inbox, delivery: Delivery, payload: IntegrationEvent | None
    ) -> Admission:
        envelope = delivery.envelope
        if payload is None and await inbox.pass_over(envelope.stream, envelope.sequence):
            return Admission(Outcome.IGNORED)  # the common case for an ignored event
        position = await inbox.lock_stream(envelope.stream)
        if envelope.sequence <= position.last_sequence:
            return Admission(Outcome.DUPLICATE)
        if envelope.sequence > position.last_sequence + 1:
            parked = ParkedEvent(
                envelope, delivery.topic, delivery.partition, delivery.offset, delivery.headers
            )
            await inbox.park(parked)
            return Admission(Outcome.PARKED)
        return Admission(has_parked=position.has_parked)

    async def plan(
        self,
        inbox: Inbox,
        deliveries: Sequence[Delivery],
        payloads: Sequence[IntegrationEvent | None],
    ) -> list[Outcome] | None:
        """Each delivery's outcome, decided for a whole batch in one round trip (locking its
        streams, which says whether events are parked on them), or None when the batch must
        go event by event (a gap, parked events). Dedup checks the events planned APPLIED
        once they are, as the batch ends (``EventProcessor.process_batch``)."""
        positions = await inbox.lock_streams(d.envelope.stream for d in deliveries)
        if any(p.has_parked for p in positions.values()):
            return None
        last = {stream: p.last_sequence for stream, p in positions.items()}
        plan: list[Outcome] = []
        for delivery, payload in zip(deliveries, payloads, strict=True):
            envelope = delivery.envelope
            if envelope.sequence <= last[envelope.stream]:
                plan.append(Outcome.DUPLICATE)
            elif envelope.sequence > last[envelope.stream] + 1:
                return None  # ahead of a gap: parked, event by event
            else:
                last[envelope.stream] = envelope.sequence
                plan.append(Outcome.IGNORED if payload is None else Outcome.APPLIED)
        return plan


class EventObservation:
    """What the per-event middleware (correlation, tracing, metrics, logs) sees of one
    event: ``active()`` is entered while the event is applied (its span and correlation
    current, so the events it causes carry them), then exactly one of ``done`` (after the
    commit), ``dead_lettered`` or ``undone`` (its batch rolled back) is called. This base
    observes nothing."""

    def active(self) -> AbstractContextManager[object]:
        return nullcontext()

    def done(self, outcome: Outcome) -> None: ...

    def dead_lettered(self, error: str, attempts: int) -> None: ...

    def undone(self, reason: str) -> None: ...


Observe = Callable[[Delivery], EventObservation]


def _unobserved(_: Delivery) -> EventObservation:
    return EventObservation()


class EventProcessor(Generic[U]):
    def __init__(
        self,
        router: Router[U],
        new_uow: Callable[[], U],
        *,
        dedup: Dedup = Dedup(),
        sequence_check: SequenceCheck = SequenceCheck(),
    ) -> None:
        self._router = router
        self._new_uow = new_uow
        self._dedup = dedup
        self._sequence_check = sequence_check

    def handles(self, event_type: str) -> bool:
        return self._router.handler_for(event_type) is not None

    def decode(self, envelope: Envelope) -> IntegrationEvent | None:
        """The typed payload, or None when no handler wants this event type. Raises
        PermanentError for an unknown version or an invalid payload of a handled type."""
        if self._router.handler_for(envelope.event_type) is None:
            return None
        try:
            return envelope.decoded()
        except (UnknownEventError, InvalidPayloadError) as exc:
            raise PermanentError(str(exc)) from exc

    async def process_batch(
        self, deliveries: Sequence[Delivery], observe: Observe = _unobserved
    ) -> list[Outcome]:
        """Apply every delivery in one transaction, each observed by ``observe(delivery)``
        (its span, its metrics). All or nothing: raises the first failure, committing
        nothing.

        The batch's bookkeeping is set-based when it can be: its streams are locked in one
        statement (which also says whether events are parked on them), what each event is
        (next in its stream, a duplicate) is decided from their positions, and once the
        handlers have run, one statement writes the dedup rows of the events applied and
        advances the streams (``_record_planned``). So are its handlers': the router's batch
        preparer loads the aggregates the batch names first, and the unit of work writes
        what changed at commit (:mod:`shared.writing.repository`). A batch of many events
        costs about what one does. A batch with an event ahead of a gap, or on a stream
        with events parked, goes event by event (``_admit``), as a lone event does."""
        payloads = [self.decode(d.envelope) for d in deliveries]  # poison fails before writing
        outcomes: list[Outcome] = []
        observations: list[EventObservation] = []
        async with self._new_uow() as uow:
            try:
                await self._router.prepare_batch([p for p in payloads if p is not None], uow)
                plan = await self._sequence_check.plan(uow.inbox, deliveries, payloads)
                for i, (delivery, payload) in enumerate(zip(deliveries, payloads, strict=True)):
                    observation = observe(delivery)
                    observations.append(observation)
                    with observation.active():
                        if plan is None:
                            outcome = await self._admit_one(uow, delivery, payload)
                        else:
                            outcome = await self._apply_planned(uow, delivery, payload, plan[i])
                        outcomes.append(outcome)
                        await uow.flush()  # its events, with its correlation and trace
                if plan is not None:
                    await self._record_planned(uow, deliveries, plan)
                await failpoint("consumer.before_db_commit")
                await uow.commit()
            except BaseException as exc:
                for observation in observations:
                    observation.undone(f"batch rolled back: {type(exc).__name__}")
                raise
        for observation, outcome in zip(observations, outcomes, strict=True):
            observation.done(outcome)
        await failpoint("consumer.after_db_commit")
        return outcomes

    async def _apply_planned(
        self, uow: U, delivery: Delivery, payload: IntegrationEvent | None, planned: Outcome
    ) -> Outcome:
        subscription = self._router.handler_for(delivery.envelope.event_type)
        if planned is not Outcome.APPLIED or subscription is None or payload is None:
            return planned
        with _rules_are_permanent():
            await _handle(subscription, uow, delivery.envelope, payload)
        return Outcome.APPLIED

    async def _record_planned(
        self, uow: U, deliveries: Sequence[Delivery], plan: Sequence[Outcome]
    ) -> None:
        """The dedup rows of the events applied, written as the streams advance past them.

        Written last, not before the handlers, to save a round trip; nothing that commits
        changes. When dedup disagrees with the plan (an event next in its stream was applied
        before: its position was lost, say to a restore), the raise rolls the whole batch
        back, handlers' work included, and the caller goes event by event, where dedup
        decides each one; only that rare case pays, in handler work wasted. Nor can a second
        owner of the partition (a rebalance overlap) slip in between: the stream locks,
        taken first by ``plan``, make its transaction wait and then plan DUPLICATE from the
        advanced positions, and ``processed_events``' unique key makes a concurrent insert
        of the same event id wait too."""
        applied = [
            d.envelope.event_id
            for d, outcome in zip(deliveries, plan, strict=True)
            if outcome is Outcome.APPLIED
        ]
        advancing = _last_applied(deliveries, plan)
        if not await self._dedup.all_first_time(uow.inbox, applied, advancing=advancing):
            raise _DedupDisagreesError(f"{len(applied)} events, some marked applied already")

    async def count_failure(self, delivery: Delivery, error: str) -> int:
        """One more failed attempt at ``delivery``'s record, recorded in a transaction of its
        own (the attempt's rolled back); how many there have been in all, by whichever
        member of the consumer group made them (see ``Inbox.count_failure``)."""
        async with self._new_uow() as uow:
            attempts = await uow.inbox.count_failure(
                delivery.topic, delivery.partition, delivery.offset, error
            )
            await uow.commit()
        return attempts

    async def forget_failures(self, delivery: Delivery) -> None:
        """``delivery``'s record was applied or dead-lettered: forget its failed attempts."""
        async with self._new_uow() as uow:
            await uow.inbox.forget_failures(delivery.topic, delivery.partition, delivery.offset)
            await uow.commit()

    async def process(self, delivery: Delivery) -> Outcome:
        payload = self.decode(delivery.envelope)  # poison fails here, before any write
        try:
            outcome = await self._process(delivery, payload, unblock=True)
        except _SuccessorFailedError as failed:
            # The event is fine; one it unblocked is not. Commit the event alone and leave
            # that successor parked: its gap timeout dead-letters it with the reason.
            log.error(
                "parked %s #%d could not be applied after its gap filled: %s",
                failed.parked.envelope.event_type,
                failed.parked.envelope.sequence,
                failed.reason,
                extra={"fields": {"event_id": str(failed.parked.envelope.event_id)}},
            )
            outcome = await self._process(delivery, payload, unblock=False)
        await failpoint("consumer.after_db_commit")
        return outcome

    async def _process(
        self, delivery: Delivery, payload: IntegrationEvent | None, *, unblock: bool
    ) -> Outcome:
        async with self._new_uow() as uow:
            outcome = await self._admit_one(uow, delivery, payload, unblock=unblock)
            await failpoint("consumer.before_db_commit")
            await uow.commit()
        return outcome

    async def _admit_one(
        self, uow: U, delivery: Delivery, payload: IntegrationEvent | None, *, unblock: bool = True
    ) -> Outcome:
        with _rules_are_permanent():
            return await self._admit(uow, delivery, payload, unblock=unblock)

    async def _admit(
        self, uow: U, delivery: Delivery, payload: IntegrationEvent | None, *, unblock: bool
    ) -> Outcome:
        admission = await self._sequence_check.admit(uow.inbox, delivery, payload)
        if admission.outcome is not None:
            return admission.outcome
        outcome = await self._apply(uow, delivery.envelope, payload)
        if admission.has_parked and unblock:
            await self._apply_unblocked(uow, delivery.envelope)
        return outcome

    async def _apply(self, uow: U, envelope: Envelope, payload: IntegrationEvent | None) -> Outcome:
        """Apply the event (or, with no handler, only move its stream on). The dedup row is
        written first: when it was there already the event is a duplicate."""
        subscription = self._router.handler_for(envelope.event_type)
        if subscription is not None and payload is not None:
            if not await self._dedup.first_time(uow.inbox, envelope.event_id):
                return Outcome.DUPLICATE
            await _handle(subscription, uow, envelope, payload)
        await uow.inbox.advance(envelope.stream, envelope.sequence)
        return Outcome.APPLIED if subscription is not None else Outcome.IGNORED

    async def _apply_unblocked(self, uow: U, applied: Envelope) -> None:
        sequence = applied.sequence + 1
        while (parked := await uow.inbox.unpark(applied.stream, sequence)) is not None:
            # The events of the one before it are drained under its own context; what it
            # changed stays in hand (a cancel finds the reservation its placement just made).
            await uow.flush()
            try:
                await self._apply(uow, parked.envelope, self.decode(parked.envelope))
            except (*TRANSIENT_DATABASE_ERRORS, *LOST_RACE_ERRORS):
                raise  # the database, not the event: the whole delivery is retried
            except Exception as exc:
                raise _SuccessorFailedError(parked, f"{type(exc).__name__}: {exc}") from exc
            sequence += 1


def _last_applied(deliveries: Sequence[Delivery], plan: Sequence[Outcome]) -> dict[Stream, int]:
    """Where each stream stands after a planned batch: its last event applied or ignored."""
    last: dict[Stream, int] = {}
    for delivery, outcome in zip(deliveries, plan, strict=True):
        if outcome is not Outcome.DUPLICATE:
            last[delivery.envelope.stream] = delivery.envelope.sequence
    return last


async def _handle(
    subscription: Subscription[U], uow: U, envelope: Envelope, payload: IntegrationEvent
) -> None:
    # An event applied after it was parked keeps its own correlation and causation.
    with correlated(envelope.correlation_id, str(envelope.event_id)):
        raise_if_armed("handler.raise", envelope.correlation_id)
        await subscription.handler(payload, uow)


@contextmanager
def _rules_are_permanent() -> Iterator[None]:
    try:
        yield
    except (DomainError, NotFoundError) as exc:  # no retry will change a rule
        raise PermanentError(f"{type(exc).__name__}: {exc}") from exc
