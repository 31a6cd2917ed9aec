"""The integration events that cross Kafka: the contract between the services.

Each event is a frozen pydantic model registered with its topic, name, schema version and the
aggregate it belongs to. An event type may have several versions; the highest is *current*:
producers publish it, handlers receive it. Consumers decode with :func:`decode_payload`,
which ignores unknown fields (tolerant reader) and returns the current model whatever version
was written:

- an older version is validated against its own model, then upcast one version at a time by
  the pure functions registered with :func:`upcaster`;
- a newer version than any this code knows is read with the current model when the topic's
  :class:`Compatibility` promises that old readers can read new data (FORWARD or FULL,
  transitive or not); on any other topic it is refused (:class:`UnknownEventError`);
- a payload that does not validate raises :class:`InvalidPayloadError`.

``tools/schemas.py`` (``make schema-check``) keeps the models compatible with the JSON
Schemas of every earlier version as first committed, under each topic's rule.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Payload(BaseModel):
    """Base of every event payload and of the values in them: immutable, unknown fields
    ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class IntegrationEvent(Payload):
    """Base of the events that cross Kafka: coarse business facts, part of the contract.

    Only these can reach the outbox (:meth:`shared.writing.outbox.Outbox.append` takes nothing else,
    for mypy and at run time). A service's chatty internal facts are
    :class:`shared.writing.aggregate.DomainEvent`s and stay inside it."""


class UnknownEventError(Exception):
    """No schema is registered for this ``(event_type, schema_version)``, and it cannot be
    read with the current one."""


class InvalidPayloadError(Exception):
    """The payload does not match its registered schema."""


class Compatibility(enum.StrEnum):
    """The Confluent Schema Registry vocabulary. BACKWARD: a reader of the new version reads
    data written with the previous one (upgrade consumers first). FORWARD: a reader of the
    previous version reads data written with the new one (upgrade producers first). FULL:
    both (any order). ``_TRANSITIVE``: against every earlier version, not only the last.
    NONE: no check."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @property
    def backward(self) -> bool:
        return self.name.startswith(("BACKWARD", "FULL"))

    @property
    def forward(self) -> bool:
        return self.name.startswith(("FORWARD", "FULL"))

    @property
    def transitive(self) -> bool:
        return self.name.endswith("_TRANSITIVE")


DEFAULT_COMPATIBILITY = Compatibility.FULL_TRANSITIVE


@dataclass(frozen=True)
class EventSpec:
    topic: str
    event_type: str
    schema_version: int
    aggregate_type: str
    model: type[IntegrationEvent]


_REGISTRY: dict[tuple[str, int], EventSpec] = {}
_BY_MODEL: dict[type[IntegrationEvent], EventSpec] = {}
_CURRENT: dict[str, EventSpec] = {}
# (event_type, from_version) -> the function turning that version into the next one
_UPCASTERS: dict[tuple[str, int], Callable[[Any], IntegrationEvent]] = {}
_RULES: dict[str, Compatibility] = {}

P = TypeVar("P", bound=IntegrationEvent)
Old = TypeVar("Old", bound=IntegrationEvent)
New = TypeVar("New", bound=IntegrationEvent)


def integration_event(
    *, topic: str, aggregate_type: str, version: int = 1, name: str | None = None
) -> Callable[[type[P]], type[P]]:
    """Register a payload model as the schema of one event type and version. An older
    version's model keeps its own class name (``InventoryRejectedV1``) and names the event
    with ``name=``; the current version's class is the event's name."""

    def register(model: type[P]) -> type[P]:
        if not issubclass(model, IntegrationEvent):
            raise TypeError(f"{model.__name__} must subclass IntegrationEvent to be one")
        spec = EventSpec(topic, name or model.__name__, version, aggregate_type, model)
        key = (spec.event_type, spec.schema_version)
        if key in _REGISTRY:
            raise ValueError(f"event {key} registered twice")
        current = _CURRENT.get(spec.event_type)
        if current is not None and (current.topic, current.aggregate_type) != (
            topic,
            aggregate_type,
        ):
            raise ValueError(f"{spec.event_type} v{version} moves to another topic or aggregate")
        _REGISTRY[key] = spec
        _BY_MODEL[model] = spec
        if current is None or current.schema_version < version:
            _CURRENT[spec.event_type] = spec
        return model

    return register


def upcaster(function: Callable[[Old], New]) -> Callable[[Old], New]:
    """Register a pure function that turns one version of an event into the next. Its
    parameter and return annotations name the two models, which must be consecutive versions
    of one event type."""
    hints = typing.get_type_hints(function)
    parameters = [name for name in hints if name != "return"]
    if len(parameters) != 1 or "return" not in hints:
        raise ValueError(f"upcaster {function.__name__} must take one event and return one")
    old, new = spec_of(hints[parameters[0]]), spec_of(hints["return"])
    if (new.event_type, new.schema_version) != (old.event_type, old.schema_version + 1):
        raise ValueError(
            f"upcaster {function.__name__} must go from one version of an event to the next, "
            f"not {old.event_type} v{old.schema_version} -> {new.event_type} v{new.schema_version}"
        )
    key = (old.event_type, old.schema_version)
    if key in _UPCASTERS:
        raise ValueError(f"{old.event_type} v{old.schema_version} has two upcasters")
    _UPCASTERS[key] = function
    return function


def topic_compatibility(topic: str, rule: Compatibility) -> None:
    """Give ``topic`` another rule than :data:`DEFAULT_COMPATIBILITY` (documented why)."""
    _RULES[topic] = rule


def compatibility_of(topic: str) -> Compatibility:
    return _RULES.get(topic, DEFAULT_COMPATIBILITY)


def spec_of(payload: IntegrationEvent | type[IntegrationEvent]) -> EventSpec:
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


def current(event_type: str) -> EventSpec:
    """The newest version of ``event_type`` this code knows: what it publishes and what its
    handlers receive."""
    try:
        return _CURRENT[event_type]
    except KeyError:
        raise UnknownEventError(f"no schema for event_type={event_type!r}") from None


def decode_payload(
    event_type: str, schema_version: int, payload: Mapping[str, Any]
) -> IntegrationEvent:
    """``payload``, written as ``schema_version`` of ``event_type``, as the current model."""
    latest = current(event_type)
    if schema_version > latest.schema_version:
        return _read_newer(latest, schema_version, payload)
    spec = lookup(event_type, schema_version)
    try:
        event = spec.model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(f"{event_type} v{schema_version}: {exc}") from exc
    return upcast(event)


def _read_newer(
    latest: EventSpec, schema_version: int, payload: Mapping[str, Any]
) -> IntegrationEvent:
    """A version from a producer deployed ahead of this consumer."""
    rule = compatibility_of(latest.topic)
    known = f"{latest.event_type} v{schema_version} is newer than v{latest.schema_version}"
    if not rule.forward:
        raise UnknownEventError(
            f"no schema for event_type={latest.event_type!r} schema_version={schema_version}: "
            f"{known}, and topic {latest.topic!r} is {rule}, which does not promise that "
            "old readers can read new versions (upgrade this consumer, then replay)"
        )
    try:
        return latest.model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(f"{known} and does not read as it: {exc}") from exc


def upcast(event: IntegrationEvent) -> IntegrationEvent:
    """``event`` turned into the current version of its type, one upcaster at a time."""
    spec = spec_of(event)
    while spec.schema_version < current(spec.event_type).schema_version:
        event = _UPCASTERS[(spec.event_type, spec.schema_version)](event)
        spec = spec_of(event)
    return event


def registered() -> list[EventSpec]:
    """Every version of every event, by topic, event type and version."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.topic, s.event_type, s.schema_version))


def current_events() -> list[EventSpec]:
    """The current version of every event, by topic and event type."""
    return [spec for spec in registered() if spec is _CURRENT[spec.event_type]]


def _check_upcasters() -> None:
    """Every version but the current one must be upcast to the next: a consumer decoding an
    old event must never find the chain broken."""
    for spec in registered():
        if spec is not _CURRENT[spec.event_type]:
            if (spec.event_type, spec.schema_version) not in _UPCASTERS:
                raise ValueError(f"{spec.event_type} v{spec.schema_version} has no upcaster")
            if (spec.event_type, spec.schema_version + 1) not in _REGISTRY:
                raise ValueError(f"{spec.event_type} skips v{spec.schema_version + 1}")


# Importing the catalog registers every event.
from shared.contracts import catalog as catalog  # noqa: E402

_check_upcasters()
