"""docker-compose.yml against the code it must agree with (no Docker engine runs here).

Checked: what Compose would accept and run wrong (a variable no settings model reads; a port,
topic or Kafka setting other than the launcher's; a query on no metric). No Compose schema is
vendored: a misspelt key or a malformed value, Compose itself refuses on the first `make up`.
Each check asserts; the last test runs each on broken copies, to show it can fail.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from infra.components import REGISTRY
from infra.kafka import Kafka, replication, server_properties
from infra.settings import (
    COMPONENTS,
    DEFAULT_KAFKA_BROKERS,
    KAFKA_NODES,
    SERVICES,
    kafka_node_name,
    ports,
)
from shared.contracts import registered
from shared.observability import metrics
from shared.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "infra/compose/prometheus.yml"
DASHBOARD = ROOT / "infra/compose/grafana/dashboards/order-fulfillment.json"
POSTGRES_INIT = ROOT / "infra/compose/postgres-init.sql"

Doc = dict[str, Any]

# Links the user's browser follows, not the container: loopback is right for them.
BROWSER_FACING = frozenset({"JAEGER_UI_URL"})
LOOPBACK = ("127.0.0.1", "localhost")
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?P<operator>:?[-?])(?P<default>[^}]*)\}")
# The host of a URL (after `//` or `user@`) or of each `host:port` of a list.
HOST = re.compile(r"(?:^|,|//|@)([\w.-]+):\d+")
CREATED_TOPIC = re.compile(r"^\s*create\s+(\S+)\s*$", re.MULTILINE)
# The launcher's Kafka settings that are one machine's addresses and folders: compose has its
# own. Every other setting the launcher writes, each compose node has, with the same value.
KAFKA_ADDRESSING = re.compile(
    r"node\.id|(advertised\.)?listeners|listener\..+|inter\.broker\.listener\.name"
    r"|controller\.quorum\..+|log\.dirs"
)
# A PromQL expression without its strings, label matchers, ranges and grouping clauses; what
# is left that is no call is a metric name.
PROMQL_NOISE = re.compile(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)')
PROMQL_NAME = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*\b(?!\s*\()")
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


@functools.cache
def _read(path: Path) -> Doc:
    text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(loaded, dict), path
    return loaded


def load(path: Path) -> Doc:
    """A fresh copy of a YAML or JSON file (anchors and merge keys resolved), safe to break."""
    return copy.deepcopy(_read(path))


def settings_class(service: str) -> type[ServiceSettings]:
    model: object = importlib.import_module(f"{service}.settings").Settings
    assert isinstance(model, type), model
    assert issubclass(model, ServiceSettings), model
    return model


def native_settings(service: str) -> ServiceSettings:
    """The settings of a native run: the defaults, and the token the launcher generates."""
    return settings_class(service).model_validate({"admin_token": "the-launchers-token"})


@functools.cache
def launcher_ports() -> dict[str, int]:
    """The launcher's default components (with its default cluster) and their main ports."""
    components = {name: REGISTRY[name] for name in COMPONENTS if name not in KAFKA_NODES}
    components |= {kafka_node_name(n): Kafka(n) for n in range(1, DEFAULT_KAFKA_BROKERS + 1)}
    return {name: component.main_port(ports({})) for name, component in components.items()}


def environment(service: Doc) -> dict[str, str]:
    """The environment as Compose passes it with nothing set on the host: `${X:-d}` is d,
    `${X:?message}` (no start without X) a stand-in for the host's value."""

    def value(match: re.Match[str]) -> str:
        if match["operator"].endswith("?"):
            return f"<{match['name']} from the host>"
        return match["default"]

    variables = service.get("environment", {})
    return {key: INTERPOLATION.sub(value, str(v)) for key, v in variables.items()}


def published(service: Doc) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each port, '' where not given."""
    padded = (["", "", *str(port).split(":")][-3:] for port in service.get("ports", []))
    return [(address, host, container) for address, host, container in padded]


def check_ports(compose: Doc) -> None:
    """Every component the launcher runs is a service, published on 127.0.0.1 at the
    launcher's port; a service's HTTP_PORT is that port, where its healthcheck asks /ready."""
    services = compose["services"]
    for name, port in launcher_ports().items():
        assert name in services, f"{name}: the launcher runs it, compose does not"
        hosts = [(address, host) for address, host, _ in published(services[name])]
        assert ("127.0.0.1", str(port)) in hosts, f"{name}: {hosts}, not 127.0.0.1:{port}"
    for name, service in services.items():
        for address, host, container in published(service):
            assert address == "127.0.0.1", f"{name}: {host or container} bound on {address!r}"
    for name in SERVICES:
        service, http = services[name], str(launcher_ports()[name])
        assert environment(service).get("HTTP_PORT") == http, f"{name}: HTTP_PORT is not {http}"
        assert published(service) == [("127.0.0.1", http, http)], name
        probe = " ".join(service.get("healthcheck", {}).get("test", []))
        assert f"http://127.0.0.1:{http}/ready" in probe, f"{name}: the healthcheck: {probe!r}"


def check_healthchecks(compose: Doc) -> None:
    """Every service that keeps running has a healthcheck; every dependency is waited on
    until healthy, or until done for a one-shot one, never merely started."""
    services = compose["services"]
    one_shot = set()
    for name, service in services.items():
        waits = service.get("depends_on", {})
        assert isinstance(waits, dict), f"{name}: depends_on without conditions"
        for dependency, how in waits.items():
            condition = how.get("condition")
            assert dependency in services, f"{name}: depends on {dependency}, no such service"
            assert condition in ("service_healthy", "service_completed_successfully"), (
                f"{name}: waits for {dependency} with condition {condition!r}"
            )
            if condition == "service_completed_successfully":
                one_shot.add(dependency)
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert name in one_shot or (check and not check.get("disable")), f"{name}: no healthcheck"


def check_environment(compose: Doc) -> None:
    """Each service gets only variables its settings model reads, and every one whose default
    is the container itself, pointed at services; they validate, on the native database, with
    the admin token from the host."""
    services = compose["services"]
    created = re.findall(r'CREATE DATABASE "?(\w+)', POSTGRES_INIT.read_text(encoding="utf-8"))
    for name in SERVICES:
        model, env = settings_class(name), environment(services[name])
        fields = {field.upper(): info for field, info in model.model_fields.items()}
        assert set(env) <= set(fields), f"{name}: {sorted(set(env) - set(fields))} not settings"
        for key, info in fields.items():
            if key not in BROWSER_FACING and any(h in str(info.default) for h in LOOPBACK):
                assert key in env, f"{name}: {key} must be set, its default is the container"
        for key, value in env.items():
            if key not in BROWSER_FACING:
                assert not any(h in value for h in LOOPBACK), f"{name}: {key}={value}"
                unknown = [host for host in HOST.findall(value) if host not in services]
                assert not unknown, f"{name}: {key} names {unknown}, not services"
        assert env.get("ADMIN_TOKEN") == "<ADMIN_TOKEN from the host>", f"{name}: ADMIN_TOKEN"
        try:
            settings = model.model_validate({key.lower(): value for key, value in env.items()})
        except ValueError as error:
            raise AssertionError(f"{name}: {error}") from error
        database = urlsplit(settings.database_url).path
        native = urlsplit(native_settings(name).database_url).path
        assert database == native, f"{name}: database {database}, the native run's is {native}"
        assert database.lstrip("/") in created, f"{name}: postgres-init creates no {database}"


def kafka_properties(service: Doc) -> dict[str, str]:
    """A node's server properties as the apache/kafka image derives them from KAFKA_*."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): value
        for key, value in environment(service).items()
        if key.startswith("KAFKA_")
    }


def check_kafka(compose: Doc) -> None:
    """The nodes are the launcher's cluster: its names, node ids, one quorum of them all,
    every setting it writes but addresses and folders; services bootstrap from every node."""
    services = compose["services"]
    nodes = [name for name, s in services.items() if "KAFKA_PROCESS_ROLES" in environment(s)]
    assert nodes == [kafka_node_name(n) for n in range(1, DEFAULT_KAFKA_BROKERS + 1)], nodes
    for number, name in enumerate(nodes, start=1):
        own = kafka_properties(services[name])
        lines = server_properties(number, ports({}), len(nodes)).splitlines()
        for key, value in (line.split("=", 1) for line in lines if not line.startswith("#")):
            if not KAFKA_ADDRESSING.fullmatch(key):
                assert own.get(key) == value, f"{name}: {key}={own.get(key)}, launcher: {value}"
        assert own.get("node.id") == str(number), f"{name}: node.id={own.get('node.id')}"
        voters = own.get("controller.quorum.voters", "")
        hosts = [voter.rpartition(":")[0] for voter in voters.split(",")]
        assert hosts == [f"{n}@{node}" for n, node in enumerate(nodes, 1)], f"{name}: {voters}"
    for name in SERVICES:
        servers = environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"]
        assert sorted(HOST.findall(servers)) == nodes, f"{name}: bootstraps from {servers}"


def check_topics(compose: Doc) -> None:
    """kafka-init creates exactly the catalog's topics and each service's dead-letter topic,
    with the launcher's replication and the services' partition count."""
    script = "\n".join(compose["services"]["kafka-init"]["command"])
    native = [native_settings(name) for name in SERVICES]
    topics = {spec.topic for spec in registered()} | {settings.dlq_topic for settings in native}
    assert sorted(CREATED_TOPIC.findall(script)) == sorted(topics)
    copies = replication(DEFAULT_KAFKA_BROKERS)
    assert set(re.findall(r"--replication-factor (\d+)", script)) == {str(copies.factor)}
    assert set(re.findall(r"min\.insync\.replicas=(\d+)", script)) == {str(copies.min_insync)}
    partitions = {str(settings.kafka_topic_partitions) for settings in native}
    assert set(re.findall(r"--partitions (\d+)", script)) == partitions


def check_scrapes(prometheus: Doc) -> None:
    """Prometheus scrapes each service, and nothing else, at /metrics on its port."""
    jobs = {
        job["job_name"]: (
            job.get("metrics_path", "/metrics"),
            [target for static in job["static_configs"] for target in static["targets"]],
        )
        for job in prometheus["scrape_configs"]
    }
    port = launcher_ports()
    assert jobs == {name: ("/metrics", [f"{name}:{port[name]}"]) for name in SERVICES}


def check_dashboard(dashboard: Doc) -> None:
    """Every query of the dashboard names metrics, only series shared.observability.metrics
    exposes (a Counter `x` as `x_total`, a Histogram as `x_bucket`, ...)."""
    series = {
        family.name + suffix
        for collector in vars(metrics).values()
        if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
        for suffix in SERIES_SUFFIXES[family.type]
    }
    for panel in (p for top in dashboard["panels"] for p in (top, *top.get("panels", []))):
        for target in panel.get("targets", []):
            names = set(PROMQL_NAME.findall(PROMQL_NOISE.sub(" ", target["expr"])))
            assert names, f"{panel['title']!r}: no metric in {target['expr']!r}"
            assert names <= series, f"{panel['title']!r}: {sorted(names - series)} not defined"


CHECKS = {
    "every component is published on loopback at the launcher's port": (COMPOSE, check_ports),
    "every long-running service has a healthcheck, waited on": (COMPOSE, check_healthchecks),
    "each service gets settings its model reads, pointed at services": (COMPOSE, check_environment),
    "the kafka nodes are the launcher's cluster": (COMPOSE, check_kafka),
    "kafka-init creates the catalog's topics and the dead-letter topics": (COMPOSE, check_topics),
    "prometheus scrapes each service on its port": (PROMETHEUS, check_scrapes),
    "the dashboard queries only metrics that exist": (DASHBOARD, check_dashboard),
}
FILE_OF = {check: path for path, check in CHECKS.values()}


@pytest.mark.parametrize(("path", "check"), CHECKS.values(), ids=CHECKS)
def test_the_files_agree_with_the_code(path: Path, check: Callable[[Doc], None]) -> None:
    check(load(path))


# (check, dotted path into its file, the value put there (None: deleted; a function: applied
# to the value there), what the failure says)
INIT_SCRIPT = "services.kafka-init.command.0"
BROKEN: list[tuple[Callable[[Doc], None], str, object, str]] = [
    (check_ports, "services.jaeger", None, "jaeger: the launcher runs it"),
    (check_ports, "services.grafana.ports", ["3000:3000"], "3000 bound on ''"),
    (check_ports, "services.shipping.environment.HTTP_PORT", "8004", "HTTP_PORT is not 8003"),
    (check_healthchecks, "services.jaeger.healthcheck", None, "jaeger: no healthcheck"),
    (check_healthchecks, "services.grafana.depends_on.prometheus.condition", "started", "start"),
    (check_environment, "services.order.environment.DATABSE_URL", "x", "['DATABSE_URL']"),
    (check_environment, "services.order.environment.HTTP_HOST", "127.0.0.1", "HTTP_HOST=127"),
    (check_environment, "services.order.environment.ADMIN_TOKEN", "s3cret", "order: ADMIN_TOKEN"),
    (check_environment, "services.order.environment.OTEL_EXPORTER_OTLP_ENDPOINT", None, "OTEL"),
    (check_kafka, "services.kafka-2.environment.KAFKA_MIN_INSYNC_REPLICAS", "1", "min.insync"),
    (check_kafka, "services.kafka-3", None, "['kafka', 'kafka-2']"),
    (check_topics, INIT_SCRIPT, lambda s: s.replace("create stock", ""), "stock"),
    (check_topics, INIT_SCRIPT, lambda s: s.replace("factor 3", "factor 1"), "{'1'}"),
    (check_scrapes, "scrape_configs.1.static_configs.0.targets.0", "inventory:8020", "8020"),
    (check_dashboard, "panels.1.targets.0.expr", "sum(consumer_event_total)", "consumer_event"),
]


@pytest.mark.parametrize(
    ("check", "at", "value", "message"),
    BROKEN,
    ids=[at if callable(v) else f"{at}={v}" for _, at, v, _ in BROKEN],
)
def test_each_check_fails_on_a_broken_copy(
    check: Callable[[Doc], None], at: str, value: object, message: str
) -> None:
    broken = load(FILE_OF[check])
    *path, last = at.split(".")
    parent: Any = functools.reduce(
        lambda d, k: d[int(k)] if isinstance(d, list) else d[k], path, broken
    )
    key = int(last) if isinstance(parent, list) else last
    if value is None:
        del parent[key]
    else:
        parent[key] = value(parent[key]) if callable(value) else value
    with pytest.raises(AssertionError, match=re.escape(message)):
        check(broken)
