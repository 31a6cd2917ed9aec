"""The writing side of the transactional outbox.

An event is appended in the same database transaction as the business change that caused it,
with the next ``sequence`` of its aggregate, the correlation and causation ids in effect and
the W3C trace context of the current span. The relay publishes it after commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from opentelemetry import propagate

from shared.contracts import IntegrationEvent, spec_of
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


class Outbox(ABC):
    """Port: appends events within the caller's transaction. ``append`` assigns the next
    sequence of the aggregate; sequences of one aggregate are 1, 2, 3, ... with no gap, in
    commit order. Only integration events go in: anything else is a ``TypeError``."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def append(self, event: IntegrationEvent, *, aggregate_id: str) -> Envelope:
        if not isinstance(event, IntegrationEvent):
            # mypy stops this first; the check catches what mypy cannot see (an Any).
            raise TypeError(
                f"{type(event).__name__} is not an integration event: only those reach the"
                " outbox (a domain event stays inside its service)"
            )
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
