"""Static checks of docker-compose.yml: no Docker engine runs here, so the file is read, not run.

The checks are plain functions that return a list of problems (empty when the file is sound),
so that the last tests can show each of them failing on a broken copy of the file. The
monitoring files the compose file mounts (the Prometheus configuration, Grafana's provisioning
and dashboard) are read alongside it, and checked against the services and
shared.observability.metrics.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft7Validator  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase

from infra.kafka import replication, server_properties
from infra.settings import DEFAULT_KAFKA_BROKERS, DLQ_TOPICS, TOPICS, kafka_node_name
from infra.settings import ports as launcher_ports
from inventory.settings import Settings as InventorySettings
from order.settings import Settings as OrderSettings
from shared.observability import metrics as shared_metrics
from shared.service.settings import ServiceSettings
from shipping.settings import Settings as ShippingSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
POSTGRES_INIT_FILE = ROOT / "infra" / "compose" / "postgres-init.sql"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose-spec.json"
PROMETHEUS_CONFIG_FILE = ROOT / "infra" / "compose" / "prometheus.yml"
GRAFANA_DIR = ROOT / "infra" / "compose" / "grafana"
DATASOURCES_DIR = GRAFANA_DIR / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = GRAFANA_DIR / "provisioning" / "dashboards"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = DATASOURCES_DIR / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = DASHBOARD_PROVIDERS_DIR / "order-fulfillment.yml"
DASHBOARD_FILE = DASHBOARDS_DIR / "order-fulfillment.json"

Compose = dict[str, Any]
Document = dict[str, Any]

# The Python services of the suite and the settings class each one reads.
SERVICE_SETTINGS: dict[str, type[ServiceSettings]] = {
    "order": OrderSettings,
    "inventory": InventorySettings,
    "shipping": ShippingSettings,
}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Addresses the user's browser follows (links on a page), not the container: loopback is
# right for them, since the compose file publishes every port on 127.0.0.1.
BROWSER_FACING = frozenset({"JAEGER_UI_URL"})
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<default>[^}]*))?\}"
)
HEALTHCHECK_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):(?P<port>\d+)(?P<path>/[^'\"\s]*)")
CREATED_TOPIC = re.compile(r"^\s*create\s+(?P<topic>\S+)\s*$", re.MULTILINE)
# The launcher's Kafka settings that are one machine's addresses and folders (listeners, proxy
# lanes, quorum endpoints, log folder, node id): compose has its own, checked on their own.
# Every other setting the launcher writes, each compose node must have, with the same value.
KAFKA_ADDRESSING = re.compile(
    r"node\.id|(advertised\.)?listeners|listener\..+|inter\.broker\.listener\.name"
    r"|controller\.quorum\..+|log\.dirs"
)

# Prometheus scrapes every service this often (infra/compose/prometheus.yml).
SCRAPE_INTERVAL_SECONDS = 5.0
DURATION = re.compile(r"(?P<amount>\d+)(?P<unit>ms|s|m|h|d)")
DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# The monitoring services: what each healthcheck probes, with which tool (one the image
# ships: busybox wget in prom/prometheus, curl in grafana/grafana), on which container port.
MONITORING_PROBES = {
    "prometheus": ("wget", "9090", "/-/ready"),
    "grafana": ("curl", "3000", "/api/health"),
}

# What a PromQL expression contains besides metric names, removed before looking for them:
# string literals, label matchers and ranges, grouping clauses, Grafana variables.
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
PROMQL_BRACKETS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
PROMQL_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
# An identifier that is not a function or aggregation call (no "(" after it) and not part of
# a number or duration (nothing word-like before it).
PROMQL_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan"}
)
PROMQL_BY = re.compile(r"\bby\s*\((?P<labels>[^)]*)\)", re.IGNORECASE)
# The labels every dashboard series is told apart by, where its metric has them.
DASHBOARD_LABELS = ("service", "topic")
# Series names prometheus_client exposes for a metric family, by type.
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


# --- loading -------------------------------------------------------------------------------


@functools.cache
def _load_compose() -> Compose:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def load_compose() -> Compose:
    """A fresh copy of docker-compose.yml (YAML anchors and merge keys resolved)."""
    return copy.deepcopy(_load_compose())


@functools.cache
def load_schema() -> dict[str, Any]:
    loaded = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def _load_document(path: Path) -> Document:
    text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


@dataclass
class Demo:
    """The compose file and the monitoring files it mounts, fresh copies (safe to break)."""

    compose: Compose
    prometheus: Document
    datasources: Document
    dashboard_providers: Document
    dashboard: Document


def load_demo() -> Demo:
    return Demo(
        compose=load_compose(),
        prometheus=copy.deepcopy(_load_document(PROMETHEUS_CONFIG_FILE)),
        datasources=copy.deepcopy(_load_document(DATASOURCES_FILE)),
        dashboard_providers=copy.deepcopy(_load_document(DASHBOARD_PROVIDERS_FILE)),
        dashboard=copy.deepcopy(_load_document(DASHBOARD_FILE)),
    )


def declared_draft(schema: dict[str, Any]) -> str:
    """The JSON Schema draft named by the schema's `$schema` keyword, e.g. 'draft-07'."""
    found = re.search(r"json-schema\.org/(draft-0\d|draft/\d{4}-\d{2})/schema", schema["$schema"])
    assert found, f"unrecognised $schema: {schema['$schema']!r}"
    return found.group(1)


def interpolate(value: object) -> str:
    """The value as Compose passes it when no variable is set on the host: `${X:-d}` -> d;
    `${X:?message}` (compose refuses to start without X) -> a stand-in for the host's value."""

    def value_of(match: re.Match[str]) -> str:
        if (match.group("operator") or "").endswith("?"):
            return f"<{match.group('name')} from the host>"
        return match.group("default") or ""

    return INTERPOLATION.sub(value_of, str(value))


def env_var_names(settings_cls: type[ServiceSettings]) -> set[str]:
    """Every environment variable the settings class reads: one per field, upper-cased."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in settings_cls.model_fields}


def env_vars_compose_must_set(settings_cls: type[ServiceSettings]) -> set[str]:
    """Required fields, plus those whose default points at the loopback interface: in a
    container that is the container itself, so the native default is wrong there."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings_cls.model_fields.items():
        variable = (prefix + name).upper()
        if variable in BROWSER_FACING:
            continue
        if field.is_required() or any(host in str(field.default) for host in LOOPBACK_HOSTS):
            names.add(variable)
    return names


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) for each published port; '' where not given."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append(
                (
                    str(port.get("host_ip", "")),
                    str(port.get("published", "")),
                    str(port.get("target", "")),
                )
            )
            continue
        spec = str(port).split("/", 1)[0]
        host, _, container = spec.rpartition(":")
        host_ip, _, host_port = host.rpartition(":") if host.count(":") else ("", "", host)
        result.append((host_ip.strip("[]"), host_port, container))
    return result


def one_shot_services(compose: Compose) -> set[str]:
    """Services something waits on to *finish* (`service_completed_successfully`)."""
    return {
        name
        for service in compose["services"].values()
        if isinstance(service.get("depends_on"), dict)
        for name, dependency in service["depends_on"].items()
        if isinstance(dependency, dict)
        and dependency.get("condition") == "service_completed_successfully"
    }


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[Path, bool]]:
    """Container path -> (host path, read-only) for each bind mount of a host path."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume.get("target", ""))
            read_only = bool(volume.get("read_only", False))
        else:
            source, target, *options = str(volume).split(":")
            read_only = "ro" in ",".join(options).split(",")
        if source.startswith((".", "/")):
            mounts[target] = ((ROOT / source).resolve(), read_only)
    return mounts


def healthcheck_command(service: dict[str, Any]) -> list[str]:
    """The healthcheck test without its CMD / CMD-SHELL marker, split into words."""
    test = service.get("healthcheck", {}).get("test", [])
    words = [str(word) for word in test] if isinstance(test, list) else str(test).split()
    if words[:1] == ["CMD-SHELL"]:
        return " ".join(words[1:]).split()
    return words[1:] if words[:1] == ["CMD"] else words


def seconds(duration: str) -> float:
    """A Prometheus duration ('5s', '1m30s') in seconds."""
    parts = DURATION.findall(duration)
    assert "".join(a + u for a, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(amount) * DURATION_SECONDS[unit] for amount, unit in parts)


@functools.cache
def defined_series() -> dict[str, tuple[str, ...]]:
    """Every series name the collectors of shared.observability.metrics expose, with their labels: a
    Counter `x` is scraped as `x_total` (and `x_created`), a Histogram as `x_bucket`, `x_sum`
    and `x_count` (and `x_created`), a Gauge under its own name."""
    series = {}
    for collector in vars(shared_metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        # The label names are not public API; they have been this attribute for years.
        labels = tuple(collector._labelnames)
        for family in collector.describe():
            for suffix in SERIES_SUFFIXES[family.type]:
                series[family.name + suffix] = labels
    return series


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels, keywords)."""
    text = PROMQL_STRING.sub(" ", expr)
    text = PROMQL_BRACKETS.sub(" ", text)
    text = PROMQL_GROUPING.sub(" ", text)
    text = GRAFANA_VARIABLE.sub(" ", text)
    return {name for name in PROMQL_IDENTIFIER.findall(text) if name.lower() not in PROMQL_KEYWORDS}


def dashboard_panels(dashboard: Document) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_targets(dashboard: Document) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, query) for every query of the dashboard."""
    return [
        (str(panel.get("title", "")), target)
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def settings_from_compose(
    compose: Compose, service_name: str, settings_cls: type[ServiceSettings]
) -> ServiceSettings:
    """The settings the service would start with: its compose environment, interpolated
    with the defaults, validated by the settings class (without reading this process's
    environment: model_validate skips the settings sources)."""
    environment = environment_of(compose["services"][service_name])
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    fields = {name.upper(): name for name in settings_cls.model_fields}
    values = {
        fields[key.upper().removeprefix(prefix)]: interpolate(value)
        for key, value in environment.items()
        if key.upper().removeprefix(prefix) in fields
    }
    return settings_cls.model_validate(values)


def native_settings(settings_cls: type[ServiceSettings]) -> ServiceSettings:
    """The defaults of a native run (the launcher supplies the one setting with none)."""
    return settings_cls.model_validate({"admin_token": "the-launchers-token"})


def kafka_nodes(compose: Compose) -> list[str]:
    """The services that run a KRaft node (the image's KAFKA_PROCESS_ROLES), in file order."""
    return [
        name
        for name, service in compose["services"].items()
        if "KAFKA_PROCESS_ROLES" in environment_of(service)
    ]


def kafka_properties(service: dict[str, Any]) -> dict[str, str]:
    """A node's server properties as the apache/kafka image derives them from its KAFKA_*
    variables: the prefix dropped, lower case, `_` -> `.` (none of them has a `_` or `-` of
    its own, which the image spells `__` and `___`)."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): interpolate(value)
        for key, value in environment_of(service).items()
        if key.startswith("KAFKA_")
    }


def launcher_properties(node: int, brokers: int) -> dict[str, str]:
    """The server.properties the native launcher writes for node `node` of a cluster of
    `brokers`, at the default ports."""
    text = server_properties(node, launcher_ports({}), brokers)
    return dict(line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")


def listener_addresses(value: str) -> dict[str, str]:
    """`NAME://host:port,...` -> {NAME: 'host:port'}."""
    return dict(item.split("://", 1) for item in value.split(",") if "://" in item)


def init_script(compose: Compose) -> str:
    command = compose["services"]["kafka-init"]["command"]
    return "\n".join(command) if isinstance(command, list) else str(command)


# --- the checks ----------------------------------------------------------------------------


def schema_problems(compose: Compose, schema: dict[str, Any]) -> list[str]:
    validator_classes = {"draft-07": Draft7Validator}
    validator_cls = validator_classes[declared_draft(schema)]
    validator_cls.check_schema(schema)
    errors: Iterable[Any] = validator_cls(schema).iter_errors(compose)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    ]


def environment_problems(
    compose: Compose, service_name: str, settings_cls: type[ServiceSettings]
) -> list[str]:
    service = compose["services"].get(service_name)
    if service is None:
        return [f"{service_name}: no such service"]
    environment = environment_of(service)
    known = env_var_names(settings_cls)
    problems = [
        f"{service_name}: {key} is not read by {settings_cls.__module__}.Settings"
        for key in sorted(set(environment) - known)
    ]
    problems += [
        f"{service_name}: {key} must be set (the native default does not work in a container)"
        for key in sorted(env_vars_compose_must_set(settings_cls) - set(environment))
    ]
    problems += [
        f"{service_name}: {key}={value} points at the container's own loopback"
        for key, value in sorted(environment.items())
        if key != "HTTP_HOST"
        and key not in BROWSER_FACING
        and any(host in value for host in LOOPBACK_HOSTS)
    ]
    if environment.get("HTTP_HOST") not in (None, "0.0.0.0"):
        problems.append(f"{service_name}: HTTP_HOST must be 0.0.0.0 to be reachable")
    if problems:
        return problems
    try:
        settings_from_compose(compose, service_name, settings_cls)
    except ValueError as error:
        problems.append(f"{service_name}: the settings do not validate: {error}")
    return problems


def port_and_readiness_problems(compose: Compose, service_name: str) -> list[str]:
    service = compose["services"][service_name]
    http_port = interpolate(environment_of(service).get("HTTP_PORT", ""))
    problems = []
    ports = published_ports(service)
    if [(host_port, container) for _, host_port, container in ports] != [(http_port, http_port)]:
        problems.append(
            f"{service_name}: publishes {ports}, expected HTTP_PORT {http_port!r} on both sides"
        )
    test = service.get("healthcheck", {}).get("test", [])
    command = " ".join(test) if isinstance(test, list) else str(test)
    found = HEALTHCHECK_URL.search(command)
    if found is None:
        problems.append(f"{service_name}: the healthcheck probes no local HTTP URL: {command!r}")
    else:
        if found.group("port") != http_port:
            problems.append(
                f"{service_name}: the healthcheck probes port {found.group('port')},"
                f" HTTP_PORT is {http_port!r}"
            )
        if found.group("path") != "/ready":
            problems.append(
                f"{service_name}: the healthcheck probes {found.group('path')}, not /ready"
            )
    if "curl" in command or "wget" in command:
        problems.append(f"{service_name}: python:3.11-slim has neither curl nor wget")
    return problems


def dependency_problems(compose: Compose) -> list[str]:
    """Every `depends_on` waits on a condition, and on a service that can meet it."""
    services: dict[str, dict[str, Any]] = compose["services"]
    problems = []
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            problems.append(f"{name}: depends_on {depends_on} without conditions")
            continue
        for dependency, options in depends_on.items():
            condition = options.get("condition") if isinstance(options, dict) else None
            if condition is None:
                problems.append(f"{name}: depends_on {dependency} without a condition")
            elif dependency not in services:
                problems.append(f"{name}: depends_on {dependency}, which is not a service")
            elif condition == "service_healthy" and "healthcheck" not in services[dependency]:
                problems.append(f"{name}: waits for {dependency} to be healthy; it has no check")
    return problems


def healthcheck_problems(compose: Compose) -> list[str]:
    """Every service that keeps running (all but the one-shot ones) has a healthcheck."""
    one_shot = one_shot_services(compose)
    return [
        f"{name}: a long-running service without a healthcheck"
        for name, service in compose["services"].items()
        if name not in one_shot
        and (service.get("healthcheck") is None or service["healthcheck"].get("disable"))
    ]


def exposure_problems(compose: Compose) -> list[str]:
    """Every published port binds 127.0.0.1, never every interface."""
    return [
        f"{name}: port {host_port or container} is published on"
        f" {host_ip or 'every interface'}, not 127.0.0.1"
        for name, service in compose["services"].items()
        for host_ip, host_port, container in published_ports(service)
        if host_ip != "127.0.0.1"
    ]


def _hosts_in(value: str) -> list[str]:
    if "://" in value:
        return [urlsplit(value).hostname or ""]
    return [server.rpartition(":")[0] for server in value.split(",")]


def addressing_problems(compose: Compose, service_name: str) -> list[str]:
    """Database, broker and trace collector addresses name services of this file, and the
    database is one that the Postgres init script creates."""
    services = compose["services"]
    environment = environment_of(services[service_name])
    problems = []
    for key in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        for host in _hosts_in(interpolate(environment.get(key, ""))):
            if host not in services:
                problems.append(f"{service_name}: {key} names {host!r}, not a compose service")
    database = urlsplit(interpolate(environment.get("DATABASE_URL", ""))).path.lstrip("/")
    created = set(
        re.findall(
            r'CREATE\s+DATABASE\s+"?([A-Za-z0-9_]+)"?',
            POSTGRES_INIT_FILE.read_text(encoding="utf-8"),
            re.IGNORECASE,
        )
    )
    if database not in created:
        problems.append(f"{service_name}: database {database!r} is not created by the init script")
    return problems


def kafka_problems(compose: Compose) -> list[str]:
    """The Kafka nodes are the launcher's default cluster: its node names and ids, every
    setting it writes (replication, min ISR, timeouts, ...) but addresses and folders, one
    quorum of them all. kafka-init creates the topics with its replication factor and min ISR;
    it and the services bootstrap from every node and wait for every node to be healthy."""
    services = compose["services"]
    nodes = kafka_nodes(compose)
    wanted = [kafka_node_name(n) for n in range(1, DEFAULT_KAFKA_BROKERS + 1)]
    if nodes != wanted:
        return [f"kafka: the nodes are {nodes}, the launcher's cluster is {wanted}"]
    settings = {name: kafka_properties(services[name]) for name in nodes}
    voters, internal, problems = [], [], []
    for number, name in enumerate(nodes, start=1):
        own = settings[name]
        problems += [
            f"{name}: {key}={own.get(key)}, the launcher's is {value}"
            for key, value in launcher_properties(number, len(nodes)).items()
            if not KAFKA_ADDRESSING.fullmatch(key) and own.get(key) != value
        ]
        if own.get("node.id") != str(number):
            problems.append(f"{name}: node.id={own.get('node.id')}, not {number}")
        controller = listener_addresses(own.get("listeners", "")).get("CONTROLLER", "")
        voters.append(f"{number}@{name}:{controller.rpartition(':')[2]}")
        advertised = listener_addresses(own.get("advertised.listeners", ""))
        internal.append(advertised.get(own.get("inter.broker.listener.name", ""), ""))
    problems += [
        f"{name}: controller.quorum.voters={settings[name].get('controller.quorum.voters')},"
        f" not {','.join(voters)}"
        for name in nodes
        if settings[name].get("controller.quorum.voters") != ",".join(voters)
    ]
    copies = replication(len(nodes))
    for option, value in (
        ("--replication-factor", copies.factor),
        ("min.insync.replicas=", copies.min_insync),
        ("--bootstrap-server", ",".join(internal)),
    ):
        found = set(re.findall(rf"{re.escape(option)}\s*(\S+)", init_script(compose)))
        if found != {str(value)}:
            problems.append(f"kafka-init: {option} {sorted(found)}, the launcher's is {value}")
    for name in ("kafka-init", *SERVICE_SETTINGS):
        depends_on = services[name].get("depends_on", {})
        waits = depends_on if isinstance(depends_on, dict) else {}
        problems += [
            f"{name}: does not wait for {node} to be healthy"
            for node in nodes
            if waits.get(node) != {"condition": "service_healthy"}
        ]
    for name in SERVICE_SETTINGS:
        servers = interpolate(environment_of(services[name]).get("KAFKA_BOOTSTRAP_SERVERS", ""))
        if sorted(servers.split(",")) != sorted(internal):
            problems.append(f"{name}: KAFKA_BOOTSTRAP_SERVERS={servers}, not every node {internal}")
    return problems


def scrape_problems(compose: Compose, prometheus: Document) -> list[str]:
    """Prometheus scrapes exactly the three services, each in a job of its own name, at
    /metrics on the port its HTTP_PORT says, every SCRAPE_INTERVAL_SECONDS."""
    services = compose["services"]
    expected = {
        name: [f"{name}:{interpolate(environment_of(services[name]).get('HTTP_PORT', ''))}"]
        for name in SERVICE_SETTINGS
    }
    defaults = prometheus.get("global", {})
    problems = []
    jobs: dict[str, list[str]] = {}
    for job in prometheus.get("scrape_configs", []):
        name = str(job.get("job_name", ""))
        targets = [
            str(target)
            for static in job.get("static_configs", [])
            for target in static.get("targets", [])
        ]
        jobs[name] = targets
        if job.keys() & {"file_sd_configs", "dns_sd_configs", "docker_sd_configs"}:
            problems.append(f"prometheus: job {name} discovers targets; list them statically")
        if name in expected and targets != expected[name]:
            problems.append(f"prometheus: job {name} scrapes {targets}, expected {expected[name]}")
        path = job.get("metrics_path", "/metrics")
        if path != "/metrics":
            problems.append(f"prometheus: job {name} scrapes {path}, not /metrics")
        if job.get("scheme", "http") != "http":
            problems.append(f"prometheus: job {name} scrapes over {job['scheme']}, not http")
        interval = str(job.get("scrape_interval", defaults.get("scrape_interval", "1m")))
        if seconds(interval) != SCRAPE_INTERVAL_SECONDS:
            problems.append(f"prometheus: job {name} scrapes every {interval}, not 5s")
        timeout = job.get("scrape_timeout", defaults.get("scrape_timeout"))
        if timeout is not None and seconds(str(timeout)) > seconds(interval):
            problems.append(f"prometheus: job {name} times out after {timeout} > {interval}")
    problems += [f"prometheus: job {name} is not a service" for name in jobs.keys() - expected]
    problems += [f"prometheus: nothing scrapes {name}" for name in expected.keys() - jobs]
    return problems


def dashboard_metric_problems(dashboard: Document) -> list[str]:
    """Every metric a dashboard query names is defined in shared.observability.metrics."""
    series = defined_series()
    problems = []
    for title, target in dashboard_targets(dashboard):
        expr = str(target.get("expr", "")).strip()
        if not expr:
            problems.append(f"dashboard: panel {title!r} has a query without an expression")
        problems += [
            f"dashboard: panel {title!r} queries {name}, "
            "not a metric of shared.observability.metrics"
            for name in sorted(promql_metric_names(expr) - series.keys())
        ]
    return problems


def dashboard_label_problems(dashboard: Document) -> list[str]:
    """Every series is labelled by service (and topic where its metric has one): the legend
    names them, and no aggregation drops them."""
    series = defined_series()
    problems = []
    for title, target in dashboard_targets(dashboard):
        expr = str(target.get("expr", ""))
        legend = str(target.get("legendFormat", ""))
        wanted = {
            label
            for name in promql_metric_names(expr) & series.keys()
            for label in series[name]
            if label in DASHBOARD_LABELS
        }
        problems += [
            f"dashboard: panel {title!r}: the legend {legend!r} does not show {label}"
            for label in sorted(wanted)
            if f"{{{{{label}}}}}" not in legend
        ]
        for found in PROMQL_BY.finditer(expr):
            kept = {label.strip() for label in found.group("labels").split(",")}
            problems += [
                f"dashboard: panel {title!r}: {found.group(0)!r} drops {label}"
                for label in sorted(wanted - kept)
            ]
    return problems


def dashboard_datasource_problems(dashboard: Document, datasources: Document) -> list[str]:
    """Every panel and query names a provisioned Prometheus datasource by its uid."""
    provisioned = {
        str(source.get("uid"))
        for source in datasources.get("datasources", [])
        if source.get("type") == "prometheus" and source.get("uid")
    }
    problems = []
    for panel in dashboard_panels(dashboard):
        if panel.get("type") == "row":
            continue
        for owner, item in [("panel", panel)] + [("query", t) for t in panel.get("targets", [])]:
            datasource = item.get("datasource")
            uid = datasource.get("uid") if isinstance(datasource, dict) else datasource
            if uid not in provisioned:
                problems.append(
                    f"dashboard: a {owner} of panel {panel.get('title')!r} uses datasource"
                    f" {uid!r}, not a provisioned Prometheus datasource {sorted(provisioned)}"
                )
    return problems


def dashboard_layout_problems(dashboard: Document) -> list[str]:
    """The shape Grafana needs: a uid, a title, a recent schema version, panels with unique
    ids and queries, laid out on the 24-column grid without overlapping."""
    problems = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard[key]:
            problems.append(f"dashboard: no {key}")
    if not 36 <= int(dashboard.get("schemaVersion", 0)) <= 41:
        problems.append(f"dashboard: schemaVersion {dashboard.get('schemaVersion')} is not 36-41")
    panels = dashboard_panels(dashboard)
    ids = [panel.get("id") for panel in panels]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        problems.append(f"dashboard: panel ids {ids} are not unique integers")
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = str(panel.get("title", ""))
        if panel.get("type") != "row" and not panel.get("targets"):
            problems.append(f"dashboard: panel {title!r} has no query")
        grid = panel.get("gridPos", {})
        x, y, w, h = (int(grid.get(key, -1)) for key in ("x", "y", "w", "h"))
        if min(x, y) < 0 or w < 1 or h < 1 or x + w > 24:
            problems.append(f"dashboard: panel {title!r} is off the grid: {grid}")
            continue
        for cell in ((column, line) for column in range(x, x + w) for line in range(y, y + h)):
            if cell in cells:
                problems.append(f"dashboard: panels {cells[cell]!r} and {title!r} overlap")
                break
            cells[cell] = title
    return problems


def provisioning_problems(demo: Demo) -> list[str]:
    """Grafana finds the dashboard: every dashboard provider reads a folder that compose
    mounts into the container, and one of them is the folder of the dashboard file."""
    mounts = bind_mounts(demo.compose["services"]["grafana"])
    problems = []
    folders = []
    for provider in demo.dashboard_providers.get("providers", []):
        path = str(provider.get("options", {}).get("path", ""))
        if path in mounts:
            folders.append(mounts[path][0])
        else:
            problems.append(f"grafana: a dashboard provider reads {path}, which is not mounted")
    if DASHBOARD_FILE.parent not in folders:
        problems.append(f"grafana: no dashboard provider reads the folder of {DASHBOARD_FILE.name}")
    return problems


def probe_problems(compose: Compose, service_name: str) -> list[str]:
    """The monitoring service's healthcheck probes its readiness endpoint, on the port it
    listens on, with a tool its image ships."""
    tool, port, path = MONITORING_PROBES[service_name]
    service = compose["services"][service_name]
    command = healthcheck_command(service)
    problems = []
    if command[:1] != [tool]:
        problems.append(f"{service_name}: the healthcheck runs {command[:1]}, not {tool}")
    found = HEALTHCHECK_URL.search(" ".join(command))
    if found is None or (found.group("port"), found.group("path")) != (port, path):
        problems.append(f"{service_name}: the healthcheck does not probe {port} {path}")
    if port not in [container for _, _, container in published_ports(service)]:
        problems.append(f"{service_name}: does not publish its port {port}")
    return problems


def monitoring_problems(demo: Demo) -> list[str]:
    """All the checks of the Prometheus and Grafana files."""
    problems = scrape_problems(demo.compose, demo.prometheus)
    problems += dashboard_metric_problems(demo.dashboard)
    problems += dashboard_label_problems(demo.dashboard)
    problems += dashboard_datasource_problems(demo.dashboard, demo.datasources)
    problems += dashboard_layout_problems(demo.dashboard)
    problems += provisioning_problems(demo)
    for name in MONITORING_PROBES:
        problems += probe_problems(demo.compose, name)
    return problems


# --- the Compose Specification -------------------------------------------------------------


def test_the_vendored_schema_is_the_draft_07_compose_specification() -> None:
    schema = load_schema()
    assert declared_draft(schema) == "draft-07"
    assert schema["title"] == "Compose Specification"
    Draft7Validator.check_schema(schema)
    assert (SCHEMA_FILE.parent / "COMPOSE-SPEC-LICENSE.md").is_file()


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_problems(load_compose(), load_schema()) == []


# --- the three services ---------------------------------------------------------------------


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_gets_exactly_the_settings_variables_it_needs(service_name: str) -> None:
    assert environment_problems(load_compose(), service_name, SERVICE_SETTINGS[service_name]) == []


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_needs_an_admin_token_from_the_host(service_name: str) -> None:
    """No default token: compose refuses to start (`${ADMIN_TOKEN:?...}`) until one is set."""
    token = str(environment_of(load_compose()["services"][service_name]).get("ADMIN_TOKEN"))
    match = INTERPOLATION.fullmatch(token)
    assert match is not None, f"{service_name}: ADMIN_TOKEN must come from the host: {token!r}"
    assert (match["name"], match["operator"]) == ("ADMIN_TOKEN", ":?"), token


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_publishes_its_http_port_and_is_healthy_when_ready(
    service_name: str,
) -> None:
    assert port_and_readiness_problems(load_compose(), service_name) == []


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_reaches_its_database_broker_and_collector_by_service_name(
    service_name: str,
) -> None:
    assert addressing_problems(load_compose(), service_name) == []


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_keeps_the_native_database_name_and_http_port(service_name: str) -> None:
    settings_cls = SERVICE_SETTINGS[service_name]
    in_compose = settings_from_compose(load_compose(), service_name, settings_cls)
    native = native_settings(settings_cls)
    assert in_compose.http_port == native.http_port
    assert urlsplit(in_compose.database_url).scheme == urlsplit(native.database_url).scheme
    assert urlsplit(in_compose.database_url).path == urlsplit(native.database_url).path


@pytest.mark.parametrize("service_name", sorted(SERVICE_SETTINGS))
def test_each_service_runs_its_own_module_from_the_shared_image(service_name: str) -> None:
    service = load_compose()["services"][service_name]
    assert service["command"] == ["python", "-m", service_name]
    assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}


# --- infrastructure and wiring ----------------------------------------------------------------


def test_every_dependency_waits_on_a_condition_the_dependency_can_meet() -> None:
    assert dependency_problems(load_compose()) == []


def test_every_long_running_service_has_a_healthcheck() -> None:
    assert healthcheck_problems(load_compose()) == []


def test_every_published_port_binds_127_0_0_1_only() -> None:
    assert exposure_problems(load_compose()) == []


def test_kafka_init_creates_every_topic_of_the_event_catalog_and_every_dead_letter_topic() -> None:
    # Compose cannot import the catalog, so its list is kept by hand and checked here against
    # the launcher's, which is derived from shared.contracts.registered().
    compose = load_compose()
    script = init_script(compose)
    dead_letter_topics = {
        settings_from_compose(compose, name, cls).dlq_topic
        for name, cls in SERVICE_SETTINGS.items()
    }
    partitions = {native_settings(cls).kafka_topic_partitions for cls in SERVICE_SETTINGS.values()}
    assert dead_letter_topics == set(DLQ_TOPICS)
    assert sorted(CREATED_TOPIC.findall(script)) == sorted(TOPICS + DLQ_TOPICS)
    assert "--if-not-exists" in script
    assert {int(n) for n in re.findall(r"--partitions\s+(\d+)", script)} == partitions


def test_kafka_is_the_launchers_cluster_and_every_topic_and_client_uses_all_of_it() -> None:
    assert kafka_problems(load_compose()) == []


def test_the_images_are_the_official_ones_named_in_the_design() -> None:
    services = load_compose()["services"]
    assert services["postgres"]["image"] == "postgres:17"
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    for name in [*kafka_nodes(load_compose()), "kafka-init"]:
        assert services[name]["image"] == services["kafka"]["image"], name
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", services["jaeger"]["image"])


def test_the_monitoring_images_are_the_official_ones_pinned_to_a_release() -> None:
    services = load_compose()["services"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", services["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", services["grafana"]["image"])


# --- Prometheus and Grafana -----------------------------------------------------------------


def test_prometheus_scrapes_exactly_the_three_services_at_metrics_on_their_http_port() -> None:
    demo = load_demo()
    assert scrape_problems(demo.compose, demo.prometheus) == []
    jobs = {job["job_name"] for job in demo.prometheus["scrape_configs"]}
    assert jobs == set(SERVICE_SETTINGS)


def test_prometheus_and_grafana_read_their_files_from_the_repository_read_only() -> None:
    services = load_compose()["services"]
    assert bind_mounts(services["prometheus"]) == {
        "/etc/prometheus/prometheus.yml": (PROMETHEUS_CONFIG_FILE, True)
    }
    assert provisioning_problems(load_demo()) == []
    assert bind_mounts(services["grafana"]) == {
        "/etc/grafana/provisioning/datasources": (DATASOURCES_DIR, True),
        "/etc/grafana/provisioning/dashboards": (DASHBOARD_PROVIDERS_DIR, True),
        "/etc/grafana/dashboards": (DASHBOARDS_DIR, True),
    }
    for path in (PROMETHEUS_CONFIG_FILE, DATASOURCES_FILE, DASHBOARD_PROVIDERS_FILE):
        assert path.is_file(), path
    assert sorted(p.name for p in DASHBOARDS_DIR.iterdir()) == [DASHBOARD_FILE.name]


def test_grafana_queries_the_compose_prometheus_and_opens_the_dashboard_to_anonymous_viewers() -> (
    None
):
    compose = load_compose()
    (datasource,) = _load_document(DATASOURCES_FILE)["datasources"]
    url = urlsplit(datasource["url"])
    assert (datasource["type"], url.scheme, url.hostname, url.port) == (
        "prometheus",
        "http",
        "prometheus",
        int(MONITORING_PROBES["prometheus"][1]),
    )
    assert datasource["uid"]
    assert datasource["isDefault"] is True
    environment = environment_of(compose["services"]["grafana"])
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/etc/grafana/dashboards/{DASHBOARD_FILE.name}"


def test_every_metric_the_dashboard_queries_is_defined_in_shared_metrics() -> None:
    assert dashboard_metric_problems(load_demo().dashboard) == []


def test_the_dashboard_shows_every_metric_of_shared_metrics() -> None:
    queried = {
        name
        for _, target in dashboard_targets(load_demo().dashboard)
        for name in promql_metric_names(target["expr"])
    }
    series_of = {
        family.name: {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
        for collector in vars(shared_metrics).values()
        if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
    }
    assert series_of, "no collectors in shared.observability.metrics"
    assert sorted(family for family, series in series_of.items() if not series & queried) == []


def test_every_dashboard_series_is_labelled_by_service_and_by_topic_where_it_has_one() -> None:
    assert dashboard_label_problems(load_demo().dashboard) == []


def test_the_dashboard_queries_the_provisioned_prometheus_datasource_by_its_uid() -> None:
    demo = load_demo()
    assert dashboard_datasource_problems(demo.dashboard, demo.datasources) == []


def test_the_dashboard_is_laid_out_as_a_grafana_dashboard() -> None:
    assert dashboard_layout_problems(load_demo().dashboard) == []


@pytest.mark.parametrize("service_name", sorted(MONITORING_PROBES))
def test_prometheus_and_grafana_are_healthy_when_ready_by_a_tool_their_image_ships(
    service_name: str,
) -> None:
    assert probe_problems(load_compose(), service_name) == []


def test_prometheus_waits_for_the_three_services_and_grafana_for_prometheus() -> None:
    services = load_compose()["services"]
    healthy = {"condition": "service_healthy"}
    assert services["prometheus"]["depends_on"] == dict.fromkeys(SERVICE_SETTINGS, healthy)
    assert services["grafana"]["depends_on"] == {"prometheus": healthy}


def test_the_promql_reader_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(a_bucket{topic="x y"}[1m])))'
        " / on (service) group_left b_total offset 5m > bool 1e3 and c:rule"
        " unless sum(rate(d_total[$__rate_interval])) without (topic)"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c:rule", "d_total"}


# --- the checks can fail --------------------------------------------------------------------


def _typo_in_an_env_var(demo: Demo) -> None:
    environment = demo.compose["services"]["order"]["environment"]
    environment["DATABSE_URL"] = environment.pop("DATABASE_URL")


def _no_healthcheck(demo: Demo) -> None:
    del demo.compose["services"]["kafka"]["healthcheck"]


def _no_prometheus_healthcheck(demo: Demo) -> None:
    del demo.compose["services"]["prometheus"]["healthcheck"]


def _port_on_every_interface(demo: Demo) -> None:
    demo.compose["services"]["jaeger"]["ports"][0] = "16686:16686"


def _grafana_on_every_interface(demo: Demo) -> None:
    demo.compose["services"]["grafana"]["ports"][0] = "3000:3000"


def _dependency_without_condition(demo: Demo) -> None:
    demo.compose["services"]["shipping"]["depends_on"] = ["postgres", "kafka"]


def _healthcheck_on_the_wrong_path(demo: Demo) -> None:
    test = demo.compose["services"]["inventory"]["healthcheck"]["test"]
    test[-1] = test[-1].replace("/ready", "/health")


def _unknown_top_level_key(demo: Demo) -> None:
    demo.compose["service"] = demo.compose.pop("services")


def _unknown_metric_in_a_dashboard_query(demo: Demo) -> None:
    _, target = dashboard_targets(demo.dashboard)[0]
    target["expr"] = "sum by (service, topic) (rate(consumer_event_total[1m]))"


def _scrape_on_the_wrong_port(demo: Demo) -> None:
    for job in demo.prometheus["scrape_configs"]:
        if job["job_name"] == "inventory":
            job["static_configs"] = [{"targets": ["inventory:8020"]}]


def _dashboard_on_another_datasource(demo: Demo) -> None:
    demo.datasources["datasources"][0]["uid"] = "another-prometheus"


def _min_insync_replicas_of_one_on_a_node(demo: Demo) -> None:
    demo.compose["services"]["kafka-2"]["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] = "1"


def _dashboards_not_mounted(demo: Demo) -> None:
    volumes = demo.compose["services"]["grafana"]["volumes"]
    volumes[:] = [volume for volume in volumes if "grafana/dashboards:" not in volume]


def _all_problems(demo: Demo) -> list[str]:
    compose = demo.compose
    if "services" not in compose:
        return schema_problems(compose, load_schema())
    problems = schema_problems(compose, load_schema())
    problems += dependency_problems(compose) + healthcheck_problems(compose)
    problems += exposure_problems(compose)
    problems += kafka_problems(compose)
    for name, settings_cls in SERVICE_SETTINGS.items():
        problems += environment_problems(compose, name, settings_cls)
        problems += port_and_readiness_problems(compose, name)
    return problems + monitoring_problems(demo)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            _typo_in_an_env_var,
            "order: DATABSE_URL is not read by order.settings.Settings",
            id="a misspelt variable is not a setting",
        ),
        pytest.param(
            _typo_in_an_env_var,
            "order: DATABASE_URL must be set",
            id="a misspelt variable leaves the real one unset",
        ),
        pytest.param(
            _no_healthcheck,
            "kafka: a long-running service without a healthcheck",
            id="a dropped healthcheck",
        ),
        pytest.param(
            _no_healthcheck,
            "waits for kafka to be healthy; it has no check",
            id="waiting on health that is never reported",
        ),
        pytest.param(
            _port_on_every_interface,
            "jaeger: port 16686 is published on every interface",
            id="a port published beyond loopback",
        ),
        pytest.param(
            _dependency_without_condition,
            "shipping: depends_on ['postgres', 'kafka'] without conditions",
            id="a dependency without a condition",
        ),
        pytest.param(
            _healthcheck_on_the_wrong_path,
            "inventory: the healthcheck probes /health, not /ready",
            id="a healthcheck on liveness instead of readiness",
        ),
        pytest.param(
            _min_insync_replicas_of_one_on_a_node,
            "kafka-2: min.insync.replicas=1, the launcher's is 2",
            id="a node that acknowledges a write on fewer copies than the launcher's",
        ),
        pytest.param(
            _unknown_top_level_key,
            "<root>: 'service' does not match any of the regexes",
            id="a key the Compose Specification does not know",
        ),
        pytest.param(
            _no_prometheus_healthcheck,
            "grafana: waits for prometheus to be healthy; it has no check",
            id="grafana waiting on a prometheus without a healthcheck",
        ),
        pytest.param(
            _grafana_on_every_interface,
            "grafana: port 3000 is published on every interface",
            id="grafana published beyond loopback",
        ),
        pytest.param(
            _unknown_metric_in_a_dashboard_query,
            "queries consumer_event_total, not a metric of shared.observability.metrics",
            id="a dashboard query naming an unknown metric",
        ),
        pytest.param(
            _scrape_on_the_wrong_port,
            "prometheus: job inventory scrapes ['inventory:8020'], expected ['inventory:8002']",
            id="a scrape target off the service's HTTP_PORT",
        ),
        pytest.param(
            _dashboard_on_another_datasource,
            "uses datasource 'order-fulfillment-prometheus', not a provisioned",
            id="a dashboard on a datasource Grafana does not have",
        ),
        pytest.param(
            _dashboards_not_mounted,
            "grafana: a dashboard provider reads /etc/grafana/dashboards, which is not mounted",
            id="a dashboard folder compose does not mount",
        ),
    ],
)
def test_the_checks_report_a_broken_compose_file(
    mutate: Callable[[Demo], None], expected: str
) -> None:
    assert _all_problems(load_demo()) == []
    broken = load_demo()
    mutate(broken)
    problems = _all_problems(broken)
    assert any(expected in problem for problem in problems), problems
