"""Regenerate the tables in docs/ that describe the code, so they cannot drift from it.

A generated region of a ``docs/*.md`` file sits between ``<!-- generated: NAME -->`` and
``<!-- /generated -->``; NAME picks one of :data:`TABLES`. ``python -m tools.docs`` (``make
docs``) rewrites every region from the code; ``--check`` only lists the stale files and exits 1.
``tests/static/test_docs.py`` fails when a region is stale. Each table is one function below;
everything outside the markers is prose and is left alone.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from infra.settings import DLQ_TOPICS, SERVICES, TOPICS
from inventory.handlers import router as inventory_router
from inventory.settings import Settings as InventorySettings
from order.handlers import router as order_router
from order.settings import Settings as OrderSettings
from shared.consuming.routing import Router
from shared.contracts import EventSpec, compatibility_of, current_events, registered
from shared.service.settings import ServiceSettings
from shipping.handlers import router as shipping_router
from shipping.settings import Settings as ShippingSettings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

ROUTERS: dict[str, Router[Any]] = {
    "order": order_router,
    "inventory": inventory_router,
    "shipping": shipping_router,
}

# The service whose outbox publishes each topic. The catalog does not name producers, so
# this is the one mapping kept here; a new topic missing from it stops the generator.
PRODUCERS: dict[str, str] = {
    "orders": "order",
    "inventory": "inventory",
    "stock": "inventory",
    "shipping": "shipping",
}

REGION = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /generated -->)",
    re.DOTALL,
)
DOTTED = re.compile(r"\b(?:\w+\.)+(?=\w)")


# --- the tables ---------------------------------------------------------------------------


def event_catalog() -> str:
    """Every registered event: version, topic, key, producer, consumers and payload fields."""
    rows = [
        [
            f"`{spec.event_type}`",
            str(spec.schema_version),
            f"`{spec.topic}`",
            f"`{spec.aggregate_type}`",
            producer_of(spec.topic),
            ", ".join(consumers_of(spec)) or "none yet",
            ", ".join(f"`{name}: {kind}`" for name, kind in fields_of(spec.model)),
        ]
        for spec in registered()
    ]
    header = [
        "event",
        "version",
        "topic",
        "aggregate (key: its id)",
        "producer",
        "consumers",
        "payload",
    ]
    return table(header, rows)


def catalog_page() -> str:
    """docs/catalog.md: each event version with its topic, key, producer, consumers, rule,
    committed schema and every field with its type and description."""
    sections = []
    for spec in registered():
        path = f"../shared/schemas/{spec.event_type}/v{spec.schema_version}.json"
        facts = (
            f"topic `{spec.topic}` ({compatibility_of(spec.topic)}), key: the "
            f"`{spec.aggregate_type}` id, producer {producer_of(spec.topic)}, consumers "
            f"{', '.join(consumers_of(spec)) or 'none yet'}; schema [{path.removeprefix('../')}]"
            f"({path})"
        )
        rows = [
            [
                f"`{name}`",
                f"`{type_name(field.annotation)}`",
                "yes" if field.is_required() else f"no (default `{field.get_default()!r}`)",
                field.description or "",
            ]
            for name, field in spec.model.model_fields.items()
        ]
        sections.append(
            f"### {spec.event_type} v{spec.schema_version}\n\n{facts}\n\n"
            + table(["field", "type", "required", "meaning"], rows)
        )
    return "\n\n".join(sections)


def event_summary() -> str:
    """The README's table: the current version of each event and who reads it."""
    rows = [
        [
            f"[`{spec.event_type}`](docs/catalog.md#{anchor_of(spec)})",
            str(spec.schema_version),
            f"`{spec.topic}`",
            producer_of(spec.topic),
            ", ".join(consumers_of(spec)) or "none yet",
        ]
        for spec in current_events()
    ]
    return table(["event", "current version", "topic", "producer", "consumers"], rows)


def anchor_of(spec: EventSpec) -> str:
    return f"{spec.event_type.lower()}-v{spec.schema_version}"


def value_types() -> str:
    """The models that event payloads nest (an order line, an address), with their fields."""
    rows = [
        [f"`{model.__name__}`", ", ".join(f"`{name}: {kind}`" for name, kind in fields_of(model))]
        for model in nested_models()
    ]
    return table(["type", "fields"], rows)


def routing_table(service: str) -> str:
    """One service's subscriptions: every event on the topics it consumes, and its handler."""
    router = ROUTERS[service]
    rows = []
    for spec in registered():
        if spec.topic not in router.topics:
            continue
        subscription = router.handler_for(spec.event_type)
        handler = f"`{subscription.name}`" if subscription else "ignored; advances its stream"
        rows.append([f"`{spec.topic}`", f"`{spec.event_type}`", handler])
    return table(["topic", "event", "handler"], rows)


def routing_tables() -> str:
    return "\n\n".join(
        f"**{service}** (`services/{service}/src/{service}/handlers.py`)\n\n"
        + routing_table(service)
        for service in SERVICES
    )


def topic_list() -> str:
    """Every Kafka topic the suite creates: the catalog's topics, then the dead-letter ones."""
    rows = []
    for topic in TOPICS:
        specs = [spec for spec in registered() if spec.topic == topic]
        aggregates = sorted({f"`{spec.aggregate_type}`" for spec in specs})
        readers = [service for service in SERVICES if topic in ROUTERS[service].topics]
        events = sorted({spec.event_type for spec in specs})
        rows.append(
            [
                f"`{topic}`",
                ", ".join(aggregates),
                producer_of(topic),
                ", ".join(readers) or "none yet",
                ", ".join(f"`{event}`" for event in events),
            ]
        )
    for topic in DLQ_TOPICS:
        service = topic.removesuffix(".dlq")
        rows.append(
            [f"`{topic}`", "the original key", f"{service}'s consumer", "none", "its dead letters"]
        )
    header = ["topic", "aggregate (key: its id)", "written by", "consumed by", "holds"]
    return table(header, rows)


def configuration() -> str:
    """Every setting: the shared ones (defaults per service where they differ), then each
    service's own. One environment variable per field, described by its Field."""
    classes: dict[str, type[ServiceSettings]] = {
        "order": OrderSettings,
        "inventory": InventorySettings,
        "shipping": ShippingSettings,
    }
    rows = []
    for name, info in ServiceSettings.model_fields.items():
        # A default that only names its service reads as one: `.../<service>`.
        defaults = {
            setting_text(classes[s].model_fields[name].default).replace(s, "<service>")
            for s in SERVICES
        }
        if len(defaults) == 1:
            shown = f"`{defaults.pop()}`"
        else:
            shown = " / ".join(
                f"`{setting_text(classes[s].model_fields[name].default)}`" for s in SERVICES
            )
        rows.append([f"`{name.upper()}`", shown, info.description or ""])
    for service, settings in classes.items():
        for name, info in settings.model_fields.items():
            if name not in ServiceSettings.model_fields:
                variable = f"`{name.upper()}` ({service})"
                rows.append([variable, f"`{setting_text(info.default)}`", info.description or ""])
    return table(["variable", "default", "meaning"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "events": event_catalog,
    "catalog": catalog_page,
    "event-summary": event_summary,
    "value-types": value_types,
    "routing": routing_tables,
    "topics": topic_list,
    "configuration": configuration,
}


# --- what the tables are made of --------------------------------------------------------------


def setting_text(value: object) -> str:
    """A default as one writes it in the environment."""
    if value is PydanticUndefined:
        return "required"
    if value == "":
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def producer_of(topic: str) -> str:
    try:
        return PRODUCERS[topic]
    except KeyError:
        raise ValueError(f"topic {topic!r} has no producer in tools/docs.py PRODUCERS") from None


def consumers_of(spec: EventSpec) -> list[str]:
    return [s for s in SERVICES if ROUTERS[s].handler_for(spec.event_type) is not None]


def fields_of(model: type[BaseModel]) -> list[tuple[str, str]]:
    return [(name, type_name(f.annotation)) for name, f in model.model_fields.items()]


def type_name(annotation: object) -> str:
    """``tuple[shared.contracts.catalog.OrderLine, ...]`` reads ``tuple[OrderLine, ...]``."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return DOTTED.sub("", repr(annotation))


def nested_models() -> list[type[BaseModel]]:
    events = {spec.model for spec in registered()}
    found: dict[type[BaseModel], None] = {}
    for spec in registered():
        for field in spec.model.model_fields.values():
            for model in models_in(field.annotation):
                if model not in events:
                    found[model] = None
    return list(found)


def models_in(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from models_in(field.annotation)
    for argument in typing.get_args(annotation):
        yield from models_in(argument)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


# --- rewriting the files --------------------------------------------------------------------


def regenerate(text: str) -> str:
    """``text`` with every generated region rendered afresh from the code."""

    def render(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"unknown generated region {name!r}; known: {', '.join(TABLES)}")
        return f"{match['open']}\n{TABLES[name]()}\n\n{match['close']}"

    return REGION.sub(render, text)


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def stale_files() -> list[Path]:
    return [path for path in documents() if regenerate(text := path.read_text()) != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="list stale files, write nothing")
    args = parser.parse_args(argv)
    stale = stale_files()
    for path in stale:
        if not args.check:
            path.write_text(regenerate(path.read_text()))
        print(f"{'stale' if args.check else 'regenerated'}: {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
