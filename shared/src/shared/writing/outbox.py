"""The writing side of the transactional outbox.

An event is appended in the same database transaction as the business change that caused it,
with the next ``sequence`` of its aggregate, the correlation and causation ids in effect and
the W3C trace context of the current span. The relay publishes it after commit.

``append`` only takes note (of the event and of the context it was appended in); ``write``,
which the unit of work calls just before it commits, takes the sequences of every aggregate
appended to in one round trip and stores every row in one more, however many events the
transaction caused. A consumer applying a batch of 50 events pays two round trips for their
events, not a hundred, and the sequence rows stay locked only for the end of the transaction.

When every event was recorded by an aggregate created in the same transaction (an order
placed, a reservation made), the sequences are known before they are taken: each stream
starts at 1. The envelopes are then made first, and the sequences taken and the rows stored
in one round trip. An aggregate new to its repository may still have a stream (re-created
after retention purged it, or appended to under its id by other code): then that round trip
stores nothing, and the events are numbered from the sequences the upsert takes, in two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
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


class Outbox(ABC):
    """Port: appends events within the caller's transaction. Sequences of one aggregate are
    1, 2, 3, ... with no gap, in commit order and in the order of ``append``. Only integration
    events go in: anything else is a ``TypeError``. ``new_aggregate`` says the event was
    recorded by an aggregate created in this transaction: a hint (see the module docstring),
    never trusted blindly.

    Adapters implement ``_take_sequences`` (for each aggregate, reserve ``count`` sequences and
    return the first, locking the aggregate's counter until the transaction ends), ``_store``
    (keep the records, in order) and, to write the events of new aggregates in one round trip,
    ``_store_new``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._appended: list[_Appended] = []

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
        if all(a.new_aggregate for a in appended):
            envelopes, messages = self._numbered(appended, dict.fromkeys(counts, 1))
            if await self._store_new(counts, messages, envelopes):
                return envelopes
            # One of them had a stream after all: nothing was stored, number them for real.
        envelopes, messages = self._numbered(appended, await self._take_sequences(counts))
        await self._store(messages, envelopes)
        return envelopes

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
        """The transaction committed. Nothing to do: the relay publishes what was stored."""

    @abstractmethod
    async def _take_sequences(
        self, counts: Mapping[AggregateKey, int]
    ) -> Mapping[AggregateKey, int]: ...

    @abstractmethod
    async def _store(
        self, messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
    ) -> None: ...

    async def _store_new(
        self,
        counts: Mapping[AggregateKey, int],
        messages: Sequence[OutgoingMessage],
        envelopes: Sequence[Envelope],
    ) -> bool:
        """For aggregates that have no sequence yet: take the first ``counts[key]`` of each
        and keep the records (numbered from 1), all or nothing. False, having done nothing,
        when one of them has a sequence already; ``ConcurrencyError`` when another
        transaction gave one of them its first sequence meanwhile. An adapter that cannot do
        it in one step keeps this default: the sequences are then always taken first."""
        return False
