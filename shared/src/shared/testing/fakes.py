"""In-memory fakes of the machinery's ports, for unit tests: outbox, inbox, unit of work.

The shared contract tests hold them to the behaviour of the PostgreSQL adapters
(:mod:`shared.persistence.postgres`), so a fake cannot drift from the real thing. Production
code never imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from shared.consuming.inbox import Inbox, ParkedEvent, Stream, StreamPosition
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.consuming.routing import Router, U
from shared.contracts import IntegrationEvent, current
from shared.contracts.envelope import Envelope, new_envelope
from shared.observability.correlation import correlated
from shared.writing.aggregate import Aggregate
from shared.writing.outbox import AggregateKey, LastSequences, Outbox, OutgoingMessage
from shared.writing.pending import HeldEvent, HeldKey, PendingEvents
from shared.writing.storm import FanOutGuard
from shared.writing.uow import Coarse, UnitOfWork, debounced


@dataclass
class InMemoryOutboxState:
    sequences: dict[tuple[str, str], int] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)
    known: LastSequences = field(default_factory=LastSequences)  # the "process's" memory


class InMemoryOutbox(Outbox):
    """The fake for unit tests; the shared contract tests hold it to the Postgres behaviour."""

    def __init__(self, state: InMemoryOutboxState, source: str) -> None:
        super().__init__(source)
        self.state = state
        self.known = state.known

    async def _take_sequences(self, counts: Mapping[AggregateKey, int]) -> dict[AggregateKey, int]:
        first: dict[AggregateKey, int] = {}
        for key, n in counts.items():
            first[key] = self.state.sequences.get(key, 0) + 1
            self.state.sequences[key] = first[key] + n - 1
        return first

    async def _store(
        self, messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
    ) -> None:
        self.state.envelopes.extend(envelopes)

    async def _store_numbered(
        self,
        last: Mapping[AggregateKey, int],
        counts: Mapping[AggregateKey, int],
        messages: Sequence[OutgoingMessage],
        envelopes: Sequence[Envelope],
    ) -> bool:
        if any(self.state.sequences.get(key, 0) != n for key, n in last.items()):
            return False  # like the statement's guard: nothing taken, nothing stored
        self.state.sequences.update({key: last[key] + n for key, n in counts.items()})
        self.state.envelopes.extend(envelopes)
        return True


@dataclass
class InMemoryInboxState:
    processed: set[UUID] = field(default_factory=set)
    sequences: dict[Stream, int] = field(default_factory=dict)
    parked: dict[tuple[Stream, int], ParkedEvent] = field(default_factory=dict)
    failures: dict[tuple[str, int, int], int] = field(default_factory=dict)


class InMemoryInbox(Inbox):
    """The fake for unit tests; the shared contract tests hold it to the Postgres behaviour."""

    def __init__(self, state: InMemoryInboxState) -> None:
        self.state = state

    async def seen(self, event_id: UUID) -> bool:
        return event_id in self.state.processed

    async def lock_stream(self, stream: Stream) -> StreamPosition:
        has_parked = any(s == stream for s, _ in self.state.parked)
        # Like the upsert, which leaves the stream's row behind at 0.
        return StreamPosition(self.state.sequences.setdefault(stream, 0), has_parked)

    async def mark_processed(self, event_id: UUID) -> bool:
        if event_id in self.state.processed:
            return False
        self.state.processed.add(event_id)
        return True

    async def pass_over(self, stream: Stream, sequence: int) -> bool:
        parked = any(s == stream for s, _ in self.state.parked)
        if parked or stream not in self.state.sequences:
            return False  # like the UPDATE, which finds no row for a stream never seen
        if self.state.sequences[stream] != sequence - 1:
            return False
        self.state.sequences[stream] = sequence
        return True

    async def advance(self, stream: Stream, sequence: int) -> None:
        self.state.sequences[stream] = max(self.state.sequences.get(stream, 0), sequence)

    async def park(self, event: ParkedEvent) -> None:
        self.state.parked.setdefault((event.envelope.stream, event.envelope.sequence), event)

    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None:
        return self.state.parked.pop((stream, sequence), None)

    async def count_failure(self, topic: str, partition: int, offset: int, error: str) -> int:
        record = (topic, partition, offset)
        self.state.failures[record] = self.state.failures.get(record, 0) + 1
        return self.state.failures[record]

    async def forget_failures(self, topic: str, partition: int, offset: int) -> None:
        self.state.failures.pop((topic, partition, offset), None)


# (aggregate_type, aggregate_id, event_type) -> the event held and the changes it stands for
PendingState = dict[HeldKey, tuple[HeldEvent, int]]


class InMemoryPendingEvents(PendingEvents):
    """The fake for unit tests: the last change wins and the changes add up, as in the
    Postgres upsert. Time plays no part: :func:`emit_pending` releases everything held, as
    if all were due."""

    def __init__(self, state: PendingState, source: str) -> None:
        super().__init__(source)
        self.state = state

    async def waiting(self) -> list[tuple[HeldEvent, int]]:
        return list(self.state.values())  # insertion order: oldest burst first

    async def _store(self, holds: Mapping[HeldKey, tuple[HeldEvent, int]]) -> None:
        for key in sorted(holds):  # new bursts take their places in key order, as upserted
            event, changes = holds[key]
            _, before = self.state.get(key, (event, 0))
            self.state[key] = (event, before + changes)


@dataclass
class InMemoryState:
    """Everything a fake unit of work persists; ``tables`` holds the service's aggregates."""

    outbox: InMemoryOutboxState = field(default_factory=InMemoryOutboxState)
    inbox: InMemoryInboxState = field(default_factory=InMemoryInboxState)
    pending: PendingState = field(default_factory=dict)
    tables: dict[str, dict[Any, Any]] = field(default_factory=dict)


async def emit_pending(state: InMemoryState, source: str) -> int:
    """What the debounce emitter does once everything is due: each held event goes to the
    outbox with its aggregate's next sequence and the correlation of its last change."""
    outbox = InMemoryOutbox(state.outbox, source)
    for event, _ in state.pending.values():
        with correlated(event.correlation_id, event.causation_id):
            await outbox.append(event.event, aggregate_id=event.aggregate_id)
    await outbox.write()
    emitted = len(state.pending)
    state.pending.clear()
    return emitted


class InMemoryUnitOfWork(UnitOfWork):
    """Works on a copy of the state and writes it back on commit, so a rollback (an exception
    in a handler) leaves nothing behind, as a real transaction would."""

    def __init__(
        self,
        state: InMemoryState,
        source: str,
        *,
        coarse: Coarse = debounced,
        fanout: FanOutGuard | None = None,
    ) -> None:
        super().__init__(coarse=coarse, fanout=fanout)
        self.state = state
        self._source = source

    async def _begin(self) -> None:
        self.working = copy.deepcopy(self.state)
        self.outbox = InMemoryOutbox(self.working.outbox, self._source)
        self.inbox = InMemoryInbox(self.working.inbox)
        self.pending = InMemoryPendingEvents(self.working.pending, self._source)

    def table(self, name: str) -> dict[Any, Any]:
        return self.working.tables.setdefault(name, {})

    async def _commit(self) -> None:
        self.state.outbox = self.working.outbox
        self.state.inbox = self.working.inbox
        self.state.pending = self.working.pending
        self.state.tables = self.working.tables
        await self.outbox.committed()

    async def _rollback(self) -> None:
        return None


A = TypeVar("A", bound=Aggregate)


def stored_copy(aggregate: A) -> A:
    """What a fake repository keeps or hands out: a deep copy, as a row would be, without
    the events it recorded (those went to the outbox)."""
    twin = copy.deepcopy(aggregate)
    twin.events = []
    return twin


class InMemoryDelivery(Generic[U]):
    """Delivers events to a service's routing table through the real ``EventProcessor``
    (decode, dedup, sequence check, parking, the handler, commit), as the Kafka consumer
    does, but in memory: a unit test exercises the wiring, not just a handler.

    Each ``deliver`` of a new event takes the next sequence of its stream; redelivering an
    envelope that was delivered before is how a test shows a duplicate."""

    def __init__(self, router: Router[U], new_uow: Callable[[], U]) -> None:
        self._processor = EventProcessor(router, new_uow)
        self._sequences: dict[tuple[str, str], int] = {}

    def envelope(
        self,
        event: IntegrationEvent,
        *,
        source: str,
        aggregate_id: str,
        correlation_id: str = "test-flow",
    ) -> Envelope:
        """A new envelope with the next sequence of the (source, aggregate) stream."""
        key = (source, aggregate_id)
        self._sequences[key] = self._sequences.get(key, 0) + 1
        return new_envelope(
            event,
            source=source,
            aggregate_id=aggregate_id,
            sequence=self._sequences[key],
            correlation_id=correlation_id,
            causation_id=None,
        )

    async def deliver(
        self, event: IntegrationEvent | Envelope, *, source: str = "", key: str = ""
    ) -> Outcome:
        """Process ``event`` (a payload, wrapped in a new envelope from ``source`` keyed by
        ``key``, or an envelope as it is); returns what the processor did with it."""
        envelope = (
            event
            if isinstance(event, Envelope)
            else self.envelope(event, source=source, aggregate_id=key)
        )
        topic = current(envelope.event_type).topic
        return await self._processor.process(Delivery(envelope, topic))
