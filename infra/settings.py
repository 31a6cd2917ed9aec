"""Where the launcher keeps things and which ports the suite uses.

Every path is derived from the repository root (the parent of this package), so the
launcher behaves the same from any working directory. Ports are read from the
environment at call time, so a test that overrides one sees it immediately.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.contracts import registered

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state"
CACHE = REPO / ".cache"
LOGS = STATE / "logs"
RUN = STATE / "run"
ADMIN_TOKEN_FILE = "admin-token"  # in the state folder: the services' admin token (mode 0600)
HOST = "127.0.0.1"

INFRA = ("postgres", "kafka", "jaeger")
SERVICES = ("order", "inventory", "shipping")
# The default set: what `start`, `run` and `status` mean without names.
COMPONENTS = INFRA + SERVICES
# Optional components, started only by name (the load suite's chaos needs them): the fault
# proxy in front of PostgreSQL and Kafka, and a second instance of each service.
TOXIPROXY = "toxiproxy"
SECOND_INSTANCES = tuple(f"{service}-2" for service in SERVICES)
OPTIONAL = (TOXIPROXY, *SECOND_INSTANCES)
# Every service process, first and second instances.
SERVICE_PROCESSES = (*SERVICES, *SECOND_INSTANCES)
# Launched stage by stage, each stage at once: a second instance waits for its first, so
# two instances never run a fresh database's migrations at the same time.
STAGES = ((*INFRA, TOXIPROXY), SERVICES, SECOND_INSTANCES)
ALL_COMPONENTS = tuple(name for stage in STAGES for name in stage)

# Derived from the event catalog, so a new topic there is created here too; docker-compose.yml
# cannot import this and keeps its own list, which tests/static/test_compose.py checks.
TOPICS = tuple(dict.fromkeys(spec.topic for spec in registered()))
DLQ_TOPICS = tuple(f"{service}.dlq" for service in SERVICES)


class InfraError(RuntimeError):
    """A failure the user can act on; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Ports:
    """The resolved port of everything the suite binds (all on 127.0.0.1)."""

    postgres: int
    kafka: int
    kafka_controller: int
    jaeger_ui: int
    jaeger_query_grpc: int
    jaeger_otlp_grpc: int
    jaeger_otlp_http: int
    order: int
    inventory: int
    shipping: int
    toxiproxy: int
    postgres_proxy: int
    kafka_proxy: int
    kafka_proxied: int
    order_2: int
    inventory_2: int
    shipping_2: int

    def of(self, component: str) -> int:
        """The main port of a component (``order-2`` too): the one its readiness is judged on."""
        value = getattr(self, component.replace("-", "_"))
        assert isinstance(value, int)
        return value


# field name -> (environment variable, default)
PORT_VARIABLES: dict[str, tuple[str, int]] = {
    "postgres": ("POSTGRES_PORT", 5432),
    "kafka": ("KAFKA_PORT", 9092),
    "kafka_controller": ("KAFKA_CONTROLLER_PORT", 9093),
    "jaeger_ui": ("JAEGER_UI_PORT", 16686),
    "jaeger_query_grpc": ("JAEGER_QUERY_GRPC_PORT", 16685),
    "jaeger_otlp_grpc": ("JAEGER_OTLP_GRPC_PORT", 4317),
    "jaeger_otlp_http": ("JAEGER_OTLP_HTTP_PORT", 4318),
    "order": ("ORDER_PORT", 8001),
    "inventory": ("INVENTORY_PORT", 8002),
    "shipping": ("SHIPPING_PORT", 8003),
    # Toxiproxy's API, and the proxies it serves: PostgreSQL's, and Kafka's in front of the
    # broker's second listener (KAFKA_PROXIED_PORT, which advertises the proxy's address).
    "toxiproxy": ("TOXIPROXY_PORT", 8474),
    "postgres_proxy": ("POSTGRES_PROXY_PORT", 15432),
    "kafka_proxy": ("KAFKA_PROXY_PORT", 19092),
    "kafka_proxied": ("KAFKA_PROXIED_PORT", 9094),
    "order_2": ("ORDER_2_PORT", 8011),
    "inventory_2": ("INVENTORY_2_PORT", 8012),
    "shipping_2": ("SHIPPING_2_PORT", 8013),
}


def _int_from_env(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InfraError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise InfraError(f"{name}={value} is out of range {low}..{high}")
    return value


def ports(environ: Mapping[str, str] | None = None) -> Ports:
    """Resolve every port from the environment (or ``environ``), falling back to defaults."""
    env = os.environ if environ is None else environ
    values = {
        field: _int_from_env(env, variable, default, 1, 65535)
        for field, (variable, default) in PORT_VARIABLES.items()
    }
    resolved = Ports(**values)
    _reject_duplicates(resolved)
    return resolved


def _reject_duplicates(resolved: Ports) -> None:
    # Two components on one port would make the second fail with a confusing bind error.
    seen: dict[int, str] = {}
    for field in PORT_VARIABLES:
        port = getattr(resolved, field)
        if port in seen:
            first, second = PORT_VARIABLES[seen[port]][0], PORT_VARIABLES[field][0]
            raise InfraError(f"{first} and {second} are both {port}; give each its own port")
        seen[port] = field


def via_proxy(environ: Mapping[str, str] | None = None) -> bool:
    """``SUITE_VIA_PROXY``: the services reach PostgreSQL and Kafka through Toxiproxy."""
    env = os.environ if environ is None else environ
    raw = env.get("SUITE_VIA_PROXY", "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise InfraError(f"SUITE_VIA_PROXY={raw!r}: use true or false")


def first_instance(component: str) -> str:
    """The service a component runs: ``order`` for ``order`` and ``order-2``."""
    return component.removesuffix("-2") if component in SECOND_INSTANCES else component


def topic_partitions(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    return _int_from_env(env, "KAFKA_TOPIC_PARTITIONS", 6, 1, 1000)


def log_path(component: str) -> Path:
    return LOGS / f"{component}.log"
