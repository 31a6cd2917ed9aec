"""Static checks of docker-compose.yml: no Docker engine runs here, so the file is read, not run.

The checks are plain functions that return a list of problems (empty when the file is sound),
so that the last tests can show each of them failing on a broken copy of the file.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft7Validator  # type: ignore[import-untyped]

from inventory.settings import Settings as InventorySettings
from order.settings import Settings as OrderSettings
from shared.settings import ServiceSettings
from shipping.settings import Settings as ShippingSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
POSTGRES_INIT_FILE = ROOT / "infra" / "compose" / "postgres-init.sql"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose-spec.json"

Compose = dict[str, Any]

# The Python services of the suite and the settings class each one reads.
SERVICE_SETTINGS: dict[str, type[ServiceSettings]] = {
    "order": OrderSettings,
    "inventory": InventorySettings,
    "shipping": ShippingSettings,
}

# Topics of the public contract (DESIGN.md); each consuming service adds its `<service>.dlq`.
CONTRACT_TOPICS = frozenset({"orders", "inventory", "shipping", "stock"})

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Addresses the user's browser follows (links on a page), not the container: loopback is
# right for them, since the compose file publishes every port on 127.0.0.1.
BROWSER_FACING = frozenset({"JAEGER_UI_URL"})
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
HEALTHCHECK_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):(?P<port>\d+)(?P<path>/[^'\"\s]*)")
CREATED_TOPIC = re.compile(r"^\s*create\s+(?P<topic>\S+)\s*$", re.MULTILINE)


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


def declared_draft(schema: dict[str, Any]) -> str:
    """The JSON Schema draft named by the schema's `$schema` keyword, e.g. 'draft-07'."""
    found = re.search(r"json-schema\.org/(draft-0\d|draft/\d{4}-\d{2})/schema", schema["$schema"])
    assert found, f"unrecognised $schema: {schema['$schema']!r}"
    return found.group(1)


def interpolate(value: object) -> str:
    """The value as Compose passes it when no variable is set on the host: `${X:-d}` -> d."""
    return INTERPOLATION.sub(lambda m: m.group("default") or "", str(value))


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
    native = settings_cls.model_validate({})
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


def test_kafka_init_creates_every_topic_and_dead_letter_topic_with_the_default_partitions() -> None:
    compose = load_compose()
    init = compose["services"]["kafka-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    dead_letter_topics = {
        settings_from_compose(compose, name, cls).dlq_topic
        for name, cls in SERVICE_SETTINGS.items()
    }
    partitions = {
        cls.model_validate({}).kafka_topic_partitions for cls in SERVICE_SETTINGS.values()
    }
    assert set(CREATED_TOPIC.findall(script)) == CONTRACT_TOPICS | dead_letter_topics
    assert "--if-not-exists" in script
    assert {int(n) for n in re.findall(r"--partitions\s+(\d+)", script)} == partitions
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    kafka = environment_of(compose["services"]["kafka"])
    assert {int(kafka["KAFKA_NUM_PARTITIONS"])} == partitions
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_is_a_single_kraft_node_with_an_internal_listener_for_the_services() -> None:
    compose = load_compose()
    kafka = environment_of(compose["services"]["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    advertised = dict(
        listener.split("://", 1) for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    bootstrap = {
        interpolate(environment_of(compose["services"][name])["KAFKA_BOOTSTRAP_SERVERS"])
        for name in SERVICE_SETTINGS
    }
    assert bootstrap == {advertised[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]]}
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert kafka[key] == "1", key


def test_the_images_are_the_official_ones_named_in_the_design() -> None:
    services = load_compose()["services"]
    assert services["postgres"]["image"] == "postgres:17"
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    assert services["kafka-init"]["image"] == services["kafka"]["image"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", services["jaeger"]["image"])


# --- the checks can fail --------------------------------------------------------------------


def _typo_in_an_env_var(compose: Compose) -> None:
    environment = compose["services"]["order"]["environment"]
    environment["DATABSE_URL"] = environment.pop("DATABASE_URL")


def _no_healthcheck(compose: Compose) -> None:
    del compose["services"]["kafka"]["healthcheck"]


def _port_on_every_interface(compose: Compose) -> None:
    compose["services"]["jaeger"]["ports"][0] = "16686:16686"


def _dependency_without_condition(compose: Compose) -> None:
    compose["services"]["shipping"]["depends_on"] = ["postgres", "kafka"]


def _healthcheck_on_the_wrong_path(compose: Compose) -> None:
    test = compose["services"]["inventory"]["healthcheck"]["test"]
    test[-1] = test[-1].replace("/ready", "/health")


def _unknown_top_level_key(compose: Compose) -> None:
    compose["service"] = compose.pop("services")


def _all_problems(compose: Compose) -> list[str]:
    if "services" not in compose:
        return schema_problems(compose, load_schema())
    problems = schema_problems(compose, load_schema())
    problems += dependency_problems(compose) + healthcheck_problems(compose)
    problems += exposure_problems(compose)
    for name, settings_cls in SERVICE_SETTINGS.items():
        problems += environment_problems(compose, name, settings_cls)
        problems += port_and_readiness_problems(compose, name)
    return problems


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
            _unknown_top_level_key,
            "<root>: 'service' does not match any of the regexes",
            id="a key the Compose Specification does not know",
        ),
    ],
)
def test_the_checks_report_a_broken_compose_file(
    mutate: Callable[[Compose], None], expected: str
) -> None:
    assert _all_problems(load_compose()) == []
    broken = load_compose()
    mutate(broken)
    problems = _all_problems(broken)
    assert any(expected in problem for problem in problems), problems
