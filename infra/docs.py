"""Regenerate the tables in docs/ that describe the code, so they cannot drift from it.

A generated region of a ``docs/*.md`` file (or the README) sits between
``<!-- generated: NAME -->`` and ``<!-- /generated -->``; NAME picks one of :data:`TABLES`.
Each table has **one home page**, where the region is rendered in full; a region of the same
name in any other page renders a link to it, so a generated fact is written in one place and
linked from the others. ``python -m infra.docs`` (``make docs``) rewrites every region from
the code; ``--check`` only lists the stale files and exits 1. ``tests/static/test_docs.py``
fails when a region is stale. Everything outside the markers is prose and is left alone.

Nothing here is a hand-kept list. The services are the workspace's members under
``services/``; each one's settings and router come from its composition root (the
``Settings`` its ``bootstrap()`` takes, the ``Router`` the definition it returns registers);
the events a service publishes are the integration events its domain constructs; the metrics
are those defined in ``shared.observability.metrics`` and in the services' modules; the
launcher's components and ports come from ``infra.settings``.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import shared.observability.metrics
from infra import settings as infra
from infra.services import router_of, settings_of
from shared.consuming.routing import Router
from shared.contracts import EventSpec, compatibility_of, current_events, registered
from shared.service.settings import ServiceSettings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

REGION = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /generated -->)",
    re.DOTALL,
)
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
DOTTED = re.compile(r"\b(?:\w+\.)+(?=\w)")


# --- what the code says ---------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One service as its composition root and its domain declare it."""

    name: str
    router: Router[Any]
    settings: type[ServiceSettings]
    publishes: frozenset[str]  # event types its domain constructs


def workspace_services() -> tuple[str, ...]:
    """The workspace's members under ``services/``, in the order ``pyproject.toml`` lists."""
    workspace = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    members = [Path(member) for member in workspace["members"]]
    return tuple(member.name for member in members if member.parent == Path("services"))


@functools.cache
def services() -> tuple[Service, ...]:
    return tuple(
        Service(name, router_of(name), settings_of(name), published_by(name))
        for name in workspace_services()
    )


def service_names() -> list[str]:
    return [service.name for service in services()]


def published_by(service: str) -> frozenset[str]:
    """The event types the service's domain constructs: what its aggregates record (or, for
    a debounced domain event, become), so what its outbox publishes."""
    models = {spec.model: spec.event_type for spec in registered()}
    found = set()
    for module in modules_of(f"{service}.domain"):
        for node in ast.walk(source_of(module)):
            if isinstance(node, ast.Call):
                called = resolve(node.func, module)
                if isinstance(called, type) and called in models:
                    found.add(models[called])
    return frozenset(found)


def producers_of(event_type: str) -> list[str]:
    return [s.name for s in services() if event_type in s.publishes]


def consumers_of(event_type: str) -> list[str]:
    return [s.name for s in services() if s.router.handler_for(event_type) is not None]


def readers_of(topic: str) -> list[str]:
    return [s.name for s in services() if topic in s.router.topics]


def modules_of(package: str) -> Iterator[ModuleType]:
    """The package and every module under it, but its ``__main__`` (which would serve)."""
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{package}."):
        if not info.name.endswith(".__main__"):
            yield importlib.import_module(info.name)


def source_of(module: ModuleType) -> ast.Module:
    return ast.parse(Path(inspect.getfile(module)).read_text())


def resolve(expression: ast.expr, module: ModuleType) -> object:
    """What a name or dotted name in ``module`` refers to; None for anything else (a local,
    a call, ``self.``)."""
    if isinstance(expression, ast.Name):
        return getattr(module, expression.id, None)
    if isinstance(expression, ast.Attribute):
        owner = resolve(expression.value, module)
        return None if owner is None else getattr(owner, expression.attr, None)
    return None


def metrics() -> Iterator[tuple[str, MetricWrapperBase]]:
    """Every Prometheus metric of the suite, with where it is kept: the machinery's, in every
    service, then each service's own."""
    seen: set[int] = set()
    sources = [("every service", [shared.observability.metrics])]
    sources += [(name, list(modules_of(name))) for name in service_names()]
    for where, modules in sources:
        for module in modules:
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase) and id(value) not in seen:
                    seen.add(id(value))
                    yield where, value


# --- the tables -----------------------------------------------------------------------------


def catalog_page() -> str:
    """Each event version with its topic, key, producer, consumers, rule, committed schema and
    every field with its type and description."""
    sections = []
    for spec in registered():
        path = f"../shared/schemas/{spec.event_type}/v{spec.schema_version}.json"
        facts = (
            f"topic `{spec.topic}` ({compatibility_of(spec.topic)}), key: the "
            f"`{spec.aggregate_type}` id, producer {names(producers_of(spec.event_type))}, "
            f"consumers {names(consumers_of(spec.event_type))}; schema "
            f"[{path.removeprefix('../')}]({path})"
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


def anchor_of(spec: EventSpec) -> str:
    return f"{spec.event_type.lower()}-v{spec.schema_version}"


def value_types() -> str:
    """The models that event payloads nest (an order line, an address), with their fields."""
    rows = [
        [f"`{model.__name__}`", ", ".join(f"`{name}: {kind}`" for name, kind in fields_of(model))]
        for model in nested_models()
    ]
    return table(["type", "fields"], rows)


def routing_table(service: Service) -> str:
    """One service's subscriptions: every event on the topics it consumes, and its handler."""
    rows = []
    for spec in current_events():
        if spec.topic not in service.router.topics:
            continue
        subscription = service.router.handler_for(spec.event_type)
        handler = f"`{subscription.name}`" if subscription else "ignored; advances its stream"
        rows.append([f"`{spec.topic}`", f"`{spec.event_type}`", handler])
    return table(["topic", "event", "handler"], rows)


def routing_tables() -> str:
    return "\n\n".join(
        f"**{service.name}** ({', '.join(f'`{path}`' for path in handler_files(service))})\n\n"
        + routing_table(service)
        for service in services()
    )


def handler_files(service: Service) -> list[str]:
    """Where the service's handlers are written, relative to the repository."""
    subscriptions = [service.router.handler_for(spec.event_type) for spec in current_events()]
    modules = dict.fromkeys(s.handler.__module__ for s in subscriptions if s is not None)
    return [str(Path(inspect.getfile(sys.modules[m])).relative_to(REPO)) for m in modules]


def topic_list() -> str:
    """Every Kafka topic the suite creates: the catalog's topics, then the dead-letter ones."""
    rows = []
    for topic in infra.TOPICS:
        specs = [spec for spec in current_events() if spec.topic == topic]
        producers = sorted({p for spec in specs for p in producers_of(spec.event_type)})
        rows.append(
            [
                f"`{topic}`",
                str(compatibility_of(topic)),
                ", ".join(sorted({f"`{spec.aggregate_type}`" for spec in specs})),
                names(producers),
                names(readers_of(topic)),
                ", ".join(f"[`{spec.event_type}`](#{anchor_of(spec)})" for spec in specs),
            ]
        )
    for topic in infra.DLQ_TOPICS:
        consumer = f"{topic.removesuffix('.dlq')}'s consumer"
        rows.append([f"`{topic}`", "none", "the original key", consumer, "none", "dead letters"])
    header = ["topic", "rule", "aggregate (key: its id)", "written by", "consumed by", "holds"]
    return table(header, rows)


def configuration() -> str:
    """Every setting: the shared ones (defaults per service where they differ), then each
    service's own. One environment variable per field, described by its Field."""
    rows = []
    for name, info in ServiceSettings.model_fields.items():
        # A default that only names its service reads as one: `.../<service>`.
        defaults = [
            (s.name, setting_text(s.settings.model_fields[name].default)) for s in services()
        ]
        generic = {text.replace(service, "<service>") for service, text in defaults}
        if len(generic) == 1:
            shown = f"`{generic.pop()}`"
        else:
            shown = " / ".join(f"`{text}`" for _, text in defaults)
        rows.append([f"`{name.upper()}`", shown, info.description or ""])
    for service in services():
        for name, info in service.settings.model_fields.items():
            if name not in ServiceSettings.model_fields:
                variable = f"`{name.upper()}` ({service.name})"
                rows.append([variable, f"`{setting_text(info.default)}`", info.description or ""])
    return table(["variable", "default", "meaning"], rows)


def metrics_table() -> str:
    """Every metric each service serves on ``/metrics``: its type, labels and help text."""
    rows = []
    for where, metric in metrics():
        (family,) = metric.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        # The label names have no public accessor; the constructor keeps them here.
        labels = [f"`{label}`" for label in metric._labelnames if label != "service"]
        rows.append([f"`{name}`", family.type, ", ".join(labels), where, family.documentation])
    return table(["metric", "type", "labels (and `service`)", "served by", "meaning"], rows)


def components() -> str:
    """What the launcher runs: every component (the Kafka cluster at its default size), how
    it is started, its ports with their variables, and a service process's proxy lane."""
    defaults = infra.Ports(**{f: default for f, (_, default) in infra.PORT_VARIABLES.items()})
    members = default_components()
    owners = {field: owner_of(field, members) for field in infra.PORT_VARIABLES}
    rows = []
    for name in members:
        node = infra.kafka_node_number(name) if is_kafka_node(name) else 1
        if node > 1:
            ports = defaults.kafka_node(node)
            shift = infra.KAFKA_NODE_STRIDE * (node - 1)
            cell = f"{ports.client}, {ports.controller}, {ports.lanes[0]}: `kafka`'s + {shift}"
        else:
            cell = ", ".join(
                f"{default} `{variable}`"
                for field, (variable, default) in infra.PORT_VARIABLES.items()
                if owners[field] == name
            )
        started = "by name" if name in infra.OPTIONAL else "`make start`"
        lane = infra.PROXY_LANES.index(name) if name in infra.PROXY_LANES else None
        rows.append([f"`{name}`", started, cell, "" if lane is None else str(lane)])
    return table(["component", "started by", "ports", "lane"], rows)


def default_components() -> list[str]:
    """The launcher's components in start order, with the Kafka cluster at its default size
    (the table must not depend on the reader's ``KAFKA_BROKERS``)."""
    nodes = [infra.kafka_node_name(n) for n in range(1, infra.DEFAULT_KAFKA_BROKERS + 1)]
    found: list[str] = []
    for name in infra.ALL_COMPONENTS:
        if not is_kafka_node(name):
            found.append(name)
        elif name == infra.KAFKA:
            found.extend(nodes)
    return found


def is_kafka_node(name: str) -> bool:
    return name == infra.KAFKA or name.startswith(f"{infra.KAFKA}-")


def owner_of(field: str, members: Sequence[str]) -> str:
    """The component a port variable belongs to, by its name: a ``..._proxy`` port is one
    Toxiproxy serves; any other starts with its component's name (``jaeger_ui``)."""
    if field.endswith("_proxy"):
        return infra.TOXIPROXY
    for name in sorted(members, key=len, reverse=True):
        key = name.replace("-", "_")
        if field == key or field.startswith(f"{key}_"):
            return name
    raise ValueError(f"port {field!r} belongs to no launcher component")


@dataclass(frozen=True)
class Table:
    home: str  # the page, under docs/, where the table is rendered in full
    render: Callable[[], str]


TABLES: dict[str, Table] = {
    "topics": Table("catalog.md", topic_list),
    "routing": Table("catalog.md", routing_tables),
    "value-types": Table("catalog.md", value_types),
    "catalog": Table("catalog.md", catalog_page),
    "configuration": Table("operations.md", configuration),
    "components": Table("operations.md", components),
    "metrics": Table("observability.md", metrics_table),
}
# Region names a page may still carry for a table that now lives elsewhere: they render the
# link, like any region outside the table's home.
MOVED: dict[str, str] = {"events": "catalog", "event-summary": "catalog"}


# --- what the tables are made of --------------------------------------------------------------


def names(items: Sequence[str]) -> str:
    return ", ".join(items) or "none yet"


def setting_text(value: object) -> str:
    """A default as one writes it in the environment."""
    if value is PydanticUndefined:
        return "required"
    if value == "":
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


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


def anchor(title: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def link_to(name: str, page: Path) -> str:
    """From ``page``, a link to the heading above table ``name``'s region in its home."""
    home = DOCS / TABLES[name].home
    text = home.read_text()
    regions = [m for m in REGION.finditer(text) if m["name"] == name]
    if len(regions) != 1:
        raise ValueError(f"table {name!r} needs one region in {home.name}; it has {len(regions)}")
    headings = [m["title"] for m in HEADING.finditer(text[: regions[0].start()])]
    title = headings[-1] if headings else home.stem
    target = os.path.relpath(home, page.parent)
    return f"Generated in one place: [{title} in {home.name}]({target}#{anchor(title)})."


def render(name: str, page: Path) -> str:
    if name in MOVED:
        return link_to(MOVED[name], page)
    if name not in TABLES:
        known = ", ".join([*TABLES, *MOVED])
        raise ValueError(f"unknown generated region {name!r}; known: {known}")
    if page.resolve() != (DOCS / TABLES[name].home).resolve():
        return link_to(name, page)
    return TABLES[name].render()


def regenerate(text: str, page: Path) -> str:
    """``text``, the content of ``page``, with every generated region rendered afresh."""

    def rewrite(match: re.Match[str]) -> str:
        return f"{match['open']}\n{render(match['name'], page)}\n\n{match['close']}"

    return REGION.sub(rewrite, text)


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def stale_files() -> list[Path]:
    return [path for path in documents() if regenerate(text := path.read_text(), path) != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="list stale files, write nothing")
    args = parser.parse_args(argv)
    stale = stale_files()
    for path in stale:
        if not args.check:
            path.write_text(regenerate(path.read_text(), path))
        print(f"{'stale' if args.check else 'regenerated'}: {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
