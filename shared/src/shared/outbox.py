"""The writing side of the transactional outbox.

An event is appended in the same database transaction as the business change that caused it,
with the next ``sequence`` of its aggregate, the correlation and causation ids in effect and
the W3C trace context of the current span. The relay publishes it after commit.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import asyncpg
from opentelemetry import propagate

from shared.contracts import Payload, spec_of
from shared.correlation import current_causation_id, current_correlation_id
from shared.envelope import Envelope, new_envelope


@dataclass(frozen=True)
class OutgoingMessage:
    """One Kafka record to publish: topic, key, value and headers."""

    topic: str
    key: str | None  # None only for a dead letter whose original record had no key
    value: bytes
    headers: dict[str, str]


def to_message(envelope: Envelope, topic: str) -> OutgoingMessage:
    headers = envelope.kafka_headers()
    propagate.inject(headers)  # traceparent/tracestate of the span that wrote the event
    return OutgoingMessage(topic, envelope.aggregate_id, envelope.to_bytes(), headers)


def notify_channel(source: str) -> str:
    return f"outbox_{source}"


class Outbox(ABC):
    """Port: appends events within the caller's transaction. ``append`` assigns the next
    sequence of the aggregate; sequences of one aggregate are 1, 2, 3, ... with no gap, in
    commit order."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def append(self, event: Payload, *, aggregate_id: str) -> Envelope:
        spec = spec_of(event)
        sequence = await self._next_sequence(spec.aggregate_type, aggregate_id)
        envelope = new_envelope(
            event,
            source=self.source,
            aggregate_id=aggregate_id,
            sequence=sequence,
            correlation_id=current_correlation_id(),
            causation_id=current_causation_id(),
        )
        await self._store(to_message(envelope, spec.topic), envelope)
        return envelope

    @abstractmethod
    async def _next_sequence(self, aggregate_type: str, aggregate_id: str) -> int: ...

    @abstractmethod
    async def _store(self, message: OutgoingMessage, envelope: Envelope) -> None: ...


class PostgresOutbox(Outbox):
    """Rows in the ``outbox`` table. The sequence comes from an upsert on
    ``outbox_sequences``: its row lock makes a second writer of the same aggregate wait for
    the first to commit, so sequence order, outbox id order and commit order agree."""

    def __init__(self, conn: asyncpg.Connection, source: str, *, direct: bool = False) -> None:
        super().__init__(source)
        self._conn = conn
        self._direct = direct
        self.written = False
        # Pitfall mode "naive dual write": messages kept here and published after commit.
        self.direct_messages: list[OutgoingMessage] = []

    async def _next_sequence(self, aggregate_type: str, aggregate_id: str) -> int:
        sequence: int = await self._conn.fetchval(
            """
            INSERT INTO outbox_sequences (aggregate_type, aggregate_id, last_sequence)
            VALUES ($1, $2, 1)
            ON CONFLICT (aggregate_type, aggregate_id)
            DO UPDATE SET last_sequence = outbox_sequences.last_sequence + 1
            RETURNING last_sequence
            """,
            aggregate_type,
            aggregate_id,
        )
        return sequence

    async def _store(self, message: OutgoingMessage, envelope: Envelope) -> None:
        if self._direct:
            self.direct_messages.append(message)
            return
        await self._conn.execute(
            """
            INSERT INTO outbox (event_id, topic, message_key, value, headers)
            VALUES ($1, $2, $3, $4, $5)
            """,
            envelope.event_id,
            message.topic,
            message.key,
            message.value,
            json.dumps(message.headers),
        )
        self.written = True


@dataclass
class InMemoryOutboxState:
    sequences: dict[tuple[str, str], int] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)


class InMemoryOutbox(Outbox):
    """The fake for unit tests; the shared contract tests hold it to the Postgres behaviour."""

    def __init__(self, state: InMemoryOutboxState, source: str) -> None:
        super().__init__(source)
        self.state = state

    async def _next_sequence(self, aggregate_type: str, aggregate_id: str) -> int:
        key = (aggregate_type, aggregate_id)
        self.state.sequences[key] = self.state.sequences.get(key, 0) + 1
        return self.state.sequences[key]

    async def _store(self, message: OutgoingMessage, envelope: Envelope) -> None:
        self.state.envelopes.append(envelope)
