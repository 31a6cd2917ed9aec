"""The integration events that cross Kafka: the contract between the services.

Each event is a frozen pydantic model registered with its topic, name, schema version and the
aggregate it belongs to. Consumers decode with :func:`decode_payload`, which ignores unknown
fields (tolerant reader) and refuses an unknown ``(event_type, schema_version)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Payload(BaseModel):
    """Base of every event payload: immutable, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class UnknownEventError(Exception):
    """No schema is registered for this ``(event_type, schema_version)``."""


class InvalidPayloadError(Exception):
    """The payload does not match its registered schema."""


@dataclass(frozen=True)
class EventSpec:
    topic: str
    event_type: str
    schema_version: int
    aggregate_type: str
    model: type[Payload]


_REGISTRY: dict[tuple[str, int], EventSpec] = {}
_BY_MODEL: dict[type[Payload], EventSpec] = {}

P = TypeVar("P", bound=Payload)


def integration_event(
    *, topic: str, aggregate_type: str, version: int = 1, name: str | None = None
) -> Callable[[type[P]], type[P]]:
    """Register a payload model as the schema of one event type and version."""

    def register(model: type[P]) -> type[P]:
        spec = EventSpec(topic, name or model.__name__, version, aggregate_type, model)
        key = (spec.event_type, spec.schema_version)
        if key in _REGISTRY:
            raise ValueError(f"event {key} registered twice")
        _REGISTRY[key] = spec
        _BY_MODEL[model] = spec
        return model

    return register


def spec_of(payload: Payload | type[Payload]) -> EventSpec:
    model = payload if isinstance(payload, type) else type(payload)
    try:
        return _BY_MODEL[model]
    except KeyError:
        raise UnknownEventError(f"{model.__name__} is not a registered integration event") from None


def lookup(event_type: str, schema_version: int) -> EventSpec:
    try:
        return _REGISTRY[(event_type, schema_version)]
    except KeyError:
        raise UnknownEventError(
            f"no schema for event_type={event_type!r} schema_version={schema_version}"
        ) from None


def decode_payload(event_type: str, schema_version: int, payload: Mapping[str, Any]) -> Payload:
    spec = lookup(event_type, schema_version)
    try:
        return spec.model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(f"{event_type} v{schema_version}: {exc}") from exc


def registered() -> list[EventSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: (s.topic, s.event_type, s.schema_version))


# Importing the catalog registers every event.
from shared.contracts import catalog as catalog  # noqa: E402
