"""The integration events that cross Kafka: the contract between the services.

Each event is a frozen pydantic model registered with its topic, name, schema version and the
aggregate it belongs to. An event type's versions are 1, 2, ... up to the highest registered,
the *current* one: producers publish it, handlers receive it. Consumers decode with
:func:`decode_payload`, which ignores unknown fields (tolerant reader) and returns the current
model whatever version was written:

- an older version is read with the current model, when the topic's :class:`Compatibility`
  promises that readers of the current version read data of that one (BACKWARD or FULL,
  transitive unless it is the very previous version). ``infra/schemas.py`` (``make
  schema-check``) proves it against each version's JSON Schema as first committed, so an
  older version needs no model: adding a field is a new version with a default, and nothing
  else;
- an older version whose data must be *transformed* on the way (a value derived or
  converted, not copied) keeps its model, registered with ``name=`` and its ``version``,
  next to a pure function from it to the next version (:func:`upcaster`): it is validated
  with that model, then upcast. The rule above then reads a model-less version with the
  next model up, which may be such a kept one;
- a newer version than any this code knows is read with the current model when the topic's
  rule promises that old readers can read new data (FORWARD or FULL, transitive or not);
- any other version is refused (:class:`UnknownEventError`); a payload that does not
  validate raises :class:`InvalidPayloadError`.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Iterable, Mapping
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
    """Register a payload model as the schema of one event type and version: the current
    version's class is the event's name. An older version has a model only when an
    :func:`upcaster` transforms its data; that model keeps a class name of its own
    (``...V1``) and names the event with ``name=``."""

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
    rule = compatibility_of(latest.topic)
    models = [version for (name, version) in _REGISTRY if name == event_type]
    reader = reader_of(schema_version, models, rule)
    if reader is None:
        raise UnknownEventError(
            f"no schema for event_type={event_type!r} schema_version={schema_version}: it has "
            f"no upcaster, and topic {latest.topic!r} is {rule}, which does not promise that "
            f"v{min(v for v in models if v > schema_version)} reads it"
        )
    spec = lookup(event_type, reader)
    read = f"{event_type} v{schema_version}"
    if reader != schema_version:
        read += f" (read as v{reader})"
    try:
        event = spec.model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(f"{read}: {exc}") from exc
    return upcast(event)


def reader_of(written: int, models: Iterable[int], rule: Compatibility) -> int | None:
    """The version whose model reads data written as version ``written`` (not newer than the
    current one) of an event whose models are ``models``, on a topic under ``rule``: its own
    model when it kept one (for an upcaster); else the next version with a model when ``rule``
    promises that its readers read ``written``'s data: BACKWARD or FULL, and transitive
    unless it is the very next version. ``None`` when no model may read it.

    :func:`decode_payload` reads by this, and the schema gate
    (:func:`shared.contracts.compatibility.check`) refuses a published version it leaves
    unread, so what the gate lets through the consumers can read."""
    reader = min((version for version in models if version >= written), default=None)
    if reader is None or reader == written:
        return reader
    if rule.backward and (rule.transitive or reader == written + 1):
        return reader
    return None


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
    """``event`` turned into the current version of its type, one upcaster at a time (none
    for the current version itself)."""
    spec = spec_of(event)
    while spec.schema_version < current(spec.event_type).schema_version:
        event = _UPCASTERS[(spec.event_type, spec.schema_version)](event)
        spec = spec_of(event)
    return event


def registered() -> list[EventSpec]:
    """Every event version that has a model (the current one of each event, and an older one
    kept for its upcaster), by topic, event type and version. The versions before the
    current one without a model are still published: their JSON Schemas are committed in
    ``shared/schemas``, and :func:`decode_payload` reads them with a later model."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.topic, s.event_type, s.schema_version))


def current_events() -> list[EventSpec]:
    """The current version of every event, by topic and event type."""
    return [spec for spec in registered() if spec is _CURRENT[spec.event_type]]


def check_upcasters() -> None:
    """An older version keeps its model only for its upcaster: a model without one would be
    a second way to read that version. (An upcaster's own registration checks that it goes
    to the next version's model, so a chain cannot break.) Run once the catalog is imported,
    and by whoever registers events of their own afterwards (a test)."""
    for spec in registered():
        key = (spec.event_type, spec.schema_version)
        if spec is not _CURRENT[spec.event_type] and key not in _UPCASTERS:
            raise ValueError(
                f"{spec.event_type} v{spec.schema_version} has a model but no upcaster: a "
                "version whose data is not transformed needs no model (the current one reads "
                "it); remove the model, or register the upcaster that transforms it"
            )


# Importing the catalog registers every event.
from shared.contracts import catalog as catalog  # noqa: E402

check_upcasters()
