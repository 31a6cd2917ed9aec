"""The event envelope of the public contract, and its Kafka encoding.

Value: the JSON envelope. Key: the aggregate id (UTF-8). Headers: ``event_type``,
``schema_version``, ``correlation_id``, ``traceparent`` (and ``tracestate``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contracts import IntegrationEvent, decode_payload, spec_of


class MalformedEnvelopeError(Exception):
    """The record value is not a valid envelope."""


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID
    event_type: str
    schema_version: int = Field(ge=1)
    source: str
    aggregate_type: str
    aggregate_id: str
    sequence: int = Field(ge=1)
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None
    payload: dict[str, Any]

    @property
    def stream(self) -> tuple[str, str, str]:
        """The ordered stream this event belongs to: one producer's one aggregate."""
        return (self.source, self.aggregate_type, self.aggregate_id)

    def decoded(self) -> IntegrationEvent:
        return decode_payload(self.event_type, self.schema_version, self.payload)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    def kafka_headers(self) -> dict[str, str]:
        return {
            "event_type": self.event_type,
            "schema_version": str(self.schema_version),
            "correlation_id": self.correlation_id,
        }


def new_envelope(
    payload: IntegrationEvent,
    *,
    source: str,
    aggregate_id: str,
    sequence: int,
    correlation_id: str,
    causation_id: str | None,
    occurred_at: datetime | None = None,
) -> Envelope:
    spec = spec_of(payload)
    return Envelope(
        event_id=uuid4(),
        event_type=spec.event_type,
        schema_version=spec.schema_version,
        source=source,
        aggregate_type=spec.aggregate_type,
        aggregate_id=aggregate_id,
        sequence=sequence,
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload.model_dump(mode="json"),
    )


def parse_envelope(value: bytes | str | None) -> Envelope:
    if value is None:
        raise MalformedEnvelopeError("empty record value (tombstone)")
    try:
        return Envelope.model_validate_json(value)
    except (ValueError, ValidationError) as exc:
        raise MalformedEnvelopeError(f"not a valid envelope: {exc}") from exc
