"""The writing side of the transactional outbox.

An event is appended in the same database transaction as the business change that caused it,
with the next ``sequence`` of its aggregate, the correlation and causation ids in effect and
the W3C trace context of the current span. The relay publishes it after commit.

``append`` only takes note (of the event and of the context it was appended in); ``write``,
which the unit of work calls just before it commits, takes the sequences of every aggregate
appended to in one round trip and stores every row in one more, however many events the
transaction caused. A consumer applying a batch of 50 events pays two round trips for their
events, not a hundred, and the sequence rows stay locked only for the end of the transaction.

When the aggregates' last sequences are known beforehand, the envelopes are numbered first
and the sequences taken and the rows stored in one round trip. They are known for an
aggregate created in the same transaction (an order placed, a reservation made: its stream
starts at 1), and for one whose last sequence this process committed (``LastSequences``, a
bounded per-process memory: the order service numbers an order's later events, the
inventory service a reservation's). Every guess is checked in that statement, which stores
nothing when one is wrong (an aggregate re-created after retention purged it, another
instance's write): the events are then numbered from the sequences the upsert takes, in
two more. So a single instance pays one round trip for its events, several pay at most
three.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import propagate

from shared.contracts import IntegrationEvent, spec_of
from shared.contracts.envelope import Envelope, new_envelope
from shared.observability.correlation import current_causation_id, current_correlation_id

AggregateKey = tuple[str, str]  # (aggregate_type, aggregate_id)


@dataclass(frozen=True)
class OutgoingMessage:
    """One Kafka record to publish: topic, key, value and headers."""

    topic: str
    key: str | None  # None for a dead letter whose record had none, and in PITFALL_UNKEYED
    value: bytes
    headers: dict[str, str]


def to_message(
    envelope: Envelope, topic: str, trace: Mapping[str, str] | None = None
) -> OutgoingMessage:
    """The record of ``envelope``, carrying ``trace`` (W3C headers), or the trace context of
    the current span when none is given."""
    headers = envelope.kafka_headers()
    if trace is None:
        propagate.inject(headers)  # traceparent/tracestate of the span that wrote the event
    else:
        headers.update(trace)
    return OutgoingMessage(topic, envelope.aggregate_id, envelope.to_bytes(), headers)


@dataclass(frozen=True)
class _Appended:
    """An event appended, with the context it was appended in: its envelope is made when
    its sequence is known."""

    event: IntegrationEvent
    aggregate_id: str
    correlation_id: str
    causation_id: str | None
    trace: dict[str, str]
    occurred_at: datetime
    new_aggregate: bool  # recorded by an aggregate created in this transaction

    @property
    def key(self) -> AggregateKey:
        return (spec_of(self.event).aggregate_type, self.aggregate_id)


class LastSequences:
    """The last sequence this process committed for each aggregate, for the most recent
    ``capacity`` aggregates: the guess that lets the next write of one number its events
    before taking their sequences (see the module docstring). Only a guess: the statement
    that takes the sequences checks it."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._last: OrderedDict[AggregateKey, int] = OrderedDict()

    def get(self, key: AggregateKey) -> int | None:
        return self._last.get(key)

    def remember(self, last: Mapping[AggregateKey, int]) -> None:
        for key, sequence in last.items():
            self._last[key] = sequence
            self._last.move_to_end(key)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)

    def forget(self, keys: Iterable[AggregateKey]) -> None:
        for key in keys:
            self._last.pop(key, None)


class Outbox(ABC):
    """Port: appends events within the caller's transaction. Sequences of one aggregate are
    1, 2, 3, ... with no gap, in commit order and in the order of ``append``. Only integration
    events go in: anything else is a ``TypeError``. ``new_aggregate`` says the event was
    recorded by an aggregate created in this transaction: a hint (see the module docstring),
    never trusted blindly.

    Adapters implement ``_take_sequences`` (for each aggregate, reserve ``count`` sequences and
    return the first, locking the aggregate's counter until the transaction ends), ``_store``
    (keep the records, in order) and, to write events numbered ahead in one round trip,
    ``_store_numbered``, with the process's ``known`` last sequences."""

    known: LastSequences | None = None  # None: never numbered ahead

    def __init__(self, source: str) -> None:
        self.source = source
        self._appended: list[_Appended] = []
        self._written: dict[AggregateKey, int] = {}  # the last sequences, once committed

    async def append(
        self, event: IntegrationEvent, *, aggregate_id: str, new_aggregate: bool = False
    ) -> None:
        if not isinstance(event, IntegrationEvent):
            # mypy stops this first; the check catches what mypy cannot see (an Any).
            raise TypeError(
                f"{type(event).__name__} is not an integration event: only those reach the"
                " outbox (a domain event stays inside its service)"
            )
        trace: dict[str, str] = {}
        propagate.inject(trace)  # the span current now, not when the transaction commits
        self._appended.append(
            _Appended(
                event,
                aggregate_id,
                current_correlation_id(),
                current_causation_id(),
                trace,
                datetime.now(UTC),
                new_aggregate,
            )
        )

    async def write(self) -> list[Envelope]:
        """Number and store what was appended since the last write; the envelopes, in order."""
        appended, self._appended = self._appended, []
        if not appended:
            return []
        counts = Counter(a.key for a in appended)
        last = self._guess(appended)
        if last is not None:
            envelopes, messages = self._numbered(appended, {k: n + 1 for k, n in last.items()})
            if await self._store_numbered(last, counts, messages, envelopes):
                self._written.update({k: last[k] + n for k, n in counts.items()})
                return envelopes
            if self.known is not None:  # a guess was wrong: nothing was stored
                self.known.forget(counts)
        first = await self._take_sequences(counts)
        envelopes, messages = self._numbered(appended, first)
        await self._store(messages, envelopes)
        self._written.update({k: first[k] + n - 1 for k, n in counts.items()})
        return envelopes

    def _guess(self, appended: Sequence[_Appended]) -> dict[AggregateKey, int] | None:
        """Each aggregate's last sequence before this write: 0 for one created in this
        transaction, the one this process committed last for the others; None when one is
        not known."""
        existing = {a.key for a in appended if not a.new_aggregate}
        last: dict[AggregateKey, int] = {}
        for key in dict.fromkeys(a.key for a in appended):
            known = None if self.known is None else self.known.get(key)
            if key not in existing:
                last[key] = 0
            elif known is not None:
                last[key] = known
            else:
                return None
        return last

    def _numbered(
        self, appended: Sequence[_Appended], first: Mapping[AggregateKey, int]
    ) -> tuple[list[Envelope], list[OutgoingMessage]]:
        """The envelopes of ``appended`` and their records, each aggregate's numbered from
        its ``first`` sequence in the order of ``append``."""
        next_sequence = dict(first)
        envelopes: list[Envelope] = []
        messages: list[OutgoingMessage] = []
        for a in appended:
            sequence = next_sequence[a.key]
            next_sequence[a.key] = sequence + 1
            envelope = new_envelope(
                a.event,
                source=self.source,
                aggregate_id=a.aggregate_id,
                sequence=sequence,
                correlation_id=a.correlation_id,
                causation_id=a.causation_id,
                occurred_at=a.occurred_at,
            )
            envelopes.append(envelope)
            messages.append(to_message(envelope, spec_of(a.event).topic, a.trace))
        return envelopes, messages

    async def committed(self) -> None:
        """The transaction committed: the relay publishes what was stored; the process
        remembers the aggregates' last sequences."""
        if self.known is not None:
            self.known.remember(self._written)
        self._written = {}

    @abstractmethod
    async def _take_sequences(
        self, counts: Mapping[AggregateKey, int]
    ) -> Mapping[AggregateKey, int]: ...

    @abstractmethod
    async def _store(
        self, messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
    ) -> None: ...

    async def _store_numbered(
        self,
        last: Mapping[AggregateKey, int],
        counts: Mapping[AggregateKey, int],
        messages: Sequence[OutgoingMessage],
        envelopes: Sequence[Envelope],
    ) -> bool:
        """Take ``counts[key]`` sequences of each aggregate whose last sequence is
        ``last[key]`` (0: none yet) and keep the records (numbered from there), all or
        nothing. False, having done nothing, when an aggregate's last sequence is not the one
        given; ``ConcurrencyError`` when another transaction moved one on meanwhile. An
        adapter that cannot do it in one step keeps this default: the sequences are then
        always taken first."""
        return False
