"""The schema gate: is a model still readable by, and able to read, its earlier versions?

Every event version is exported as a JSON Schema (:func:`schema_of`). What producers and
consumers out there were built with is each version's *published* schema: its first
committed form (``infra/schemas.py`` reads it from git history). :func:`check` compares the
current models with them under each topic's :class:`~shared.contracts.Compatibility` and names
every breach: the event, the version, the field and the rule broken. Fields a reader does not
know are ignored (tolerant reader), so adding an optional field is the one change that is
compatible both ways.

Each finding breaks one direction. *Backward* (a reader of the new version reads old data):
a new required field, a narrowed constraint. *Forward* (a reader of an old version reads new
data): a removed or renamed field, a widened constraint or an added enum value. A changed
type breaks both. A topic's rule says which directions it checks, and whether against every
earlier version (transitive) or only the last. A rule is never lowered below the strongest
one history recorded for its topic: that is a breach too, and the recorded rule still applies.

An older version needs no model of its own: the current model reads its data, and the
comparison above is what proves it can. :func:`check` also refuses a published version that
no model reads any more (by :func:`~shared.contracts.reader_of`, the rule that
:func:`~shared.contracts.decode_payload` reads by): one of an event whose every model is
gone, one newer than its event's newest model, or an older one without a model of its own
on a topic whose rule does not promise that the next model up reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shared.contracts import Compatibility, EventSpec, compatibility_of, reader_of, registered

Schema = dict[str, Any]
Key = tuple[str, int]  # (event_type, schema_version)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
RULE_FIELD = "x-compatibility"  # where each schema records its topic's rule

RULES: dict[str, str] = {
    "removed field": "fields are never removed, only deprecated (earlier readers use them)",
    "renamed field": "fields are never renamed: add the new name as an optional field",
    "changed type": "a field's type never changes: add a field with the new type",
    "new required field": "a new field is optional, with a default (old events do not have it)",
    "made required": "an optional field stays optional (old events may lack it)",
    "made optional": "a required field stays required (earlier readers need it)",
    "narrowed constraint": "constraints are never narrowed (old events may not meet them)",
    "widened constraint": "constraints are never widened (earlier readers refuse the new values)",
    "added enum value": "enum values are added only where every reader tolerates them",
    "unreadable version": (
        "a published version stays readable: by a later model on a topic whose rule is BACKWARD "
        "or FULL (transitive beyond the next version), else by its own model and an upcaster"
    ),
    "lowered compatibility": (
        "a topic's rule is never lowered (readers rely on every promise it made); "
        "an event that needs a weaker one is a new event type on a topic of its own"
    ),
}
BACKWARD, FORWARD, BOTH = "backward", "forward", "both"
_NOISE = {"title", "description", "examples", "deprecated"}
_LOWER = ("minLength", "minItems", "minimum")
_UPPER = ("maxLength", "maxItems", "maximum")


@dataclass(frozen=True)
class Breach:
    event_type: str
    version: int
    against: int
    field: str
    rule: str
    detail: str
    compatibility: Compatibility

    def __str__(self) -> str:
        return (
            f"{self.event_type} v{self.version} against published v{self.against} "
            f"({self.compatibility}): field `{self.field}`: {self.rule}: {self.detail}. "
            f"Rule: {RULES[self.rule]}."
        )


@dataclass(frozen=True)
class Report:
    breaches: list[Breach]
    uncommitted: list[str]  # compatible, but the written file differs or is missing

    @property
    def ok(self) -> bool:
        return not self.breaches


def schema_of(spec: EventSpec) -> Schema:
    """The JSON Schema of one event version, as committed."""
    body = spec.model.model_json_schema(mode="validation")
    body.pop("title", None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{spec.event_type} v{spec.schema_version}",
        "x-event-type": spec.event_type,
        "x-schema-version": spec.schema_version,
        "x-topic": spec.topic,
        "x-aggregate-type": spec.aggregate_type,
        RULE_FIELD: str(compatibility_of(spec.topic)),
        **body,
    }


def current_schemas() -> dict[Key, Schema]:
    """The schema of every event version that has a model (see
    :func:`~shared.contracts.registered`): the published versions without one are read from
    their committed files."""
    return {(s.event_type, s.schema_version): schema_of(s) for s in registered()}


def check(
    current: Mapping[Key, Schema],
    published: Mapping[Key, Schema],
    *,
    recorded: Mapping[str, Compatibility] | None = None,
    written: Mapping[Key, Schema] | None = None,
) -> Report:
    """Every current schema (one per model) against the published ones of its event, up to
    its version; and every published version without a model must be one a model reads
    (:func:`~shared.contracts.reader_of`).

    ``recorded`` is the strongest rule per topic that history recorded (by default, that of
    the published schemas). A current rule that checks less is a breach, and the recorded one
    is applied anyway, so lowering a rule cannot switch the gate off in the same change.
    ``written`` are the files as they are now (by default ``published``): a compatible model
    that differs from its file is reported ``uncommitted``."""
    if recorded is None:
        recorded = _recorded(published.values())
    written = published if written is None else written
    breaches: list[Breach] = [
        unread
        for key in sorted(set(published) - set(current))
        if (unread := _unread(key, current, published))
    ]
    uncommitted = []
    for (event_type, version), new in sorted(current.items()):
        declared = Compatibility(new[RULE_FIELD])
        before = recorded.get(new["x-topic"], Compatibility.NONE)
        rule = strongest(declared, before)
        if rule is not declared:
            breaches.append(
                Breach(
                    event_type,
                    version,
                    version,
                    RULE_FIELD,
                    "lowered compatibility",
                    f"topic `{new['x-topic']}` is now {declared}, git history recorded {before}",
                    rule,
                )
            )
        for against, old in _earlier(event_type, version, current, published, rule):
            breaches.extend(
                Breach(event_type, version, against, field, name, detail, rule)
                for field, name, detail, breaks in compare(old, new)
                if (breaks in (BACKWARD, BOTH) and rule.backward)
                or (breaks in (FORWARD, BOTH) and rule.forward)
            )
        if written.get((event_type, version)) != new:
            state = "changed" if (event_type, version) in written else "new"
            uncommitted.append(f"{event_type} v{version} ({state})")
    return Report(breaches, uncommitted)


def _unread(
    key: Key, current: Mapping[Key, Schema], published: Mapping[Key, Schema]
) -> Breach | None:
    """The breach when no model reads the published version ``key``, which has none of its
    own; the topic's rule is the one the models declare, which decoding reads by."""
    event_type, version = key
    models = [v for (name, v) in current if name == event_type]
    if not models:
        rule = Compatibility(published[key].get(RULE_FIELD, Compatibility.FULL_TRANSITIVE))
        detail = "published, but no model of its event is registered"
    else:
        newest = current[(event_type, max(models))]
        rule = Compatibility(newest[RULE_FIELD])
        if reader_of(version, models, rule) is not None:
            return None
        if version > max(models):
            detail = f"published, but newer than v{max(models)}, the newest model"
        else:
            reader = min(v for v in models if v > version)
            detail = (
                f"published without a model of its own (for an upcaster), and topic "
                f"`{newest['x-topic']}` is {rule}, which does not promise that v{reader} reads it"
            )
    return Breach(event_type, version, version, "(all)", "unreadable version", detail, rule)


def strongest(*rules: Compatibility) -> Compatibility:
    """The weakest rule that checks everything each of ``rules`` checks: FULL for BACKWARD
    and FORWARD; a rule is *lowered* when this is not the rule itself."""
    backward = any(rule.backward for rule in rules)
    forward = any(rule.forward for rule in rules)
    transitive = any(rule.transitive for rule in rules)
    name = {(True, True): "FULL", (True, False): "BACKWARD", (False, True): "FORWARD"}
    base = name.get((backward, forward), "NONE")
    return Compatibility(f"{base}_TRANSITIVE" if transitive and base != "NONE" else base)


def _recorded(schemas: Iterable[Schema]) -> dict[str, Compatibility]:
    by_topic: dict[str, list[Compatibility]] = {}
    for schema in schemas:
        by_topic.setdefault(schema["x-topic"], []).append(Compatibility(schema[RULE_FIELD]))
    return {topic: strongest(*rules) for topic, rules in by_topic.items()}


def _earlier(
    event_type: str,
    version: int,
    current: Mapping[Key, Schema],
    published: Mapping[Key, Schema],
    rule: Compatibility,
) -> list[tuple[int, Schema]]:
    """What ``version`` must stay compatible with: the published schema of each version up
    to its own (a model not published yet stands in for an earlier version)."""
    if rule is Compatibility.NONE:
        return []
    found = []
    for v in range(1, version + 1):
        schema = published.get((event_type, v))
        if schema is None and v < version:
            schema = current.get((event_type, v))
        if schema is not None:
            found.append((v, schema))
    return found if rule.transitive else found[-1:]


# --- comparing two schemas --------------------------------------------------------------------

Finding = tuple[str, str, str, str]  # field, rule, detail, the direction it breaks


def compare(old: Schema, new: Schema) -> list[Finding]:
    """What changed from ``old`` to ``new`` that some reader cannot cope with."""
    return list(_object(_Node(old, old), _Node(new, new), ""))


@dataclass(frozen=True)
class _Node:
    schema: Schema
    root: Schema

    def resolved(self) -> _Node:
        node = self.schema
        while "$ref" in node:
            name = node["$ref"].removeprefix("#/$defs/")
            node = self.root["$defs"][name]
        return _Node(node, self.root)

    def child(self, schema: Schema) -> _Node:
        return _Node(schema, self.root).resolved()

    def shape(self) -> str:
        """The node without its names and prose, references expanded: two fields of one
        shape under two names look like a rename."""

        def strip(value: Any) -> Any:
            if isinstance(value, dict):
                if "$ref" in value:
                    return strip(self.child(value).schema)
                return {k: strip(v) for k, v in value.items() if k not in _NOISE | {"default"}}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value

        return json.dumps(strip(self.schema), sort_keys=True)


def _object(old: _Node, new: _Node, path: str) -> Iterator[Finding]:
    old_fields: dict[str, Any] = old.schema.get("properties", {})
    new_fields: dict[str, Any] = new.schema.get("properties", {})
    old_required = set(old.schema.get("required", ()))
    new_required = set(new.schema.get("required", ()))
    added = [name for name in new_fields if name not in old_fields]
    for name, field in old_fields.items():
        if name in new_fields:
            continue
        shape = old.child(field).shape()
        twin = next((a for a in added if new.child(new_fields[a]).shape() == shape), None)
        if twin is not None:
            added.remove(twin)
            yield (
                path + name,
                "renamed field",
                f"gone, and `{path + twin}` of its shape is new",
                FORWARD,
            )
            if twin in new_required:
                yield path + twin, "new required field", "old events do not have it", BACKWARD
        else:
            yield path + name, "removed field", "in the published schema, not in the model", FORWARD
    for name in added:
        if name in new_required:
            yield path + name, "new required field", "old events do not have it", BACKWARD
    for name in old_fields.keys() & new_fields.keys():
        if name in new_required and name not in old_required:
            yield path + name, "made required", "was optional", BACKWARD
        if name in old_required and name not in new_required:
            yield path + name, "made optional", "was required", FORWARD
        yield from _value(old.child(old_fields[name]), new.child(new_fields[name]), path + name)


def _value(old: _Node, new: _Node, path: str) -> Iterator[Finding]:
    old_kind, new_kind = _kind(old), _kind(new)
    if old_kind != new_kind:
        yield path, "changed type", f"{old_kind} -> {new_kind}", BOTH
        return
    if "anyOf" in old.schema:
        pairs = zip(_alternatives(old), _alternatives(new), strict=True)
        for old_alternative, new_alternative in pairs:
            yield from _value(old_alternative, new_alternative, path)
        return
    if old_kind == "object":
        yield from _object(old, new, path + ".")
        return
    yield from _constraints(old.schema, new.schema, path)
    if old_kind == "array" and "items" in old.schema:
        yield from _value(
            old.child(old.schema["items"]), new.child(new.schema["items"]), path + "[]"
        )


def _kind(node: _Node) -> str:
    """The type of a value, with its format: ``string/uuid``, ``integer | null``, ..."""
    if "anyOf" in node.schema:
        return " | ".join(sorted(_kind(alternative) for alternative in _alternatives(node)))
    if "enum" in node.schema or "const" in node.schema:
        return str(node.schema.get("type", "enum"))
    kind = node.schema.get("type", "object" if "properties" in node.schema else "any")
    return f"{kind}/{node.schema['format']}" if "format" in node.schema else str(kind)


def _alternatives(node: _Node) -> list[_Node]:
    return sorted((node.child(a) for a in node.schema["anyOf"]), key=_kind)


def _bounds(schema: Schema) -> dict[str, float]:
    """Lower and upper bounds, an integer's exclusive ones made inclusive (gt=0 is ge=1)."""
    step = 1 if schema.get("type") == "integer" else 0
    bounds = {k: float(schema[k]) for k in (*_LOWER, *_UPPER) if k in schema}
    if "exclusiveMinimum" in schema:
        bounds["minimum"] = max(bounds.get("minimum", -1e308), schema["exclusiveMinimum"] + step)
    if "exclusiveMaximum" in schema:
        bounds["maximum"] = min(bounds.get("maximum", 1e308), schema["exclusiveMaximum"] - step)
    return bounds


def _constraints(old: Schema, new: Schema, path: str) -> Iterator[Finding]:
    old_bounds, new_bounds = _bounds(old), _bounds(new)
    for key in _LOWER:
        before, after = old_bounds.get(key, -1e308), new_bounds.get(key, -1e308)
        if after > before:
            yield path, "narrowed constraint", f"{key} {_n(before)} -> {_n(after)}", BACKWARD
        elif after < before:
            yield path, "widened constraint", f"{key} {_n(before)} -> {_n(after)}", FORWARD
    for key in _UPPER:
        before, after = old_bounds.get(key, 1e308), new_bounds.get(key, 1e308)
        if after < before:
            yield path, "narrowed constraint", f"{key} {_n(before)} -> {_n(after)}", BACKWARD
        elif after > before:
            yield path, "widened constraint", f"{key} {_n(before)} -> {_n(after)}", FORWARD
    if old.get("pattern") != new.get("pattern"):
        change = f"pattern {old.get('pattern')!r} -> {new.get('pattern')!r}"
        if "pattern" not in new:
            yield path, "widened constraint", change, FORWARD
        else:
            yield path, "narrowed constraint", change, BACKWARD if "pattern" not in old else BOTH
    old_values = old.get("enum", [old["const"]] if "const" in old else None)
    new_values = new.get("enum", [new["const"]] if "const" in new else None)
    if old_values is not None and new_values is not None:
        if gone := [v for v in old_values if v not in new_values]:
            yield path, "narrowed constraint", f"enum values removed: {gone}", BACKWARD
        if more := [v for v in new_values if v not in old_values]:
            yield path, "added enum value", f"{more}", FORWARD


def _n(bound: float) -> str:
    if abs(bound) >= 1e308:
        return "none"
    return str(int(bound)) if bound == int(bound) else str(bound)
