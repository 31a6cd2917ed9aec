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
COMPONENTS = INFRA + SERVICES

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

    def of(self, component: str) -> int:
        """The main port of a component: the one its readiness is judged on."""
        value = getattr(self, component)
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


def topic_partitions(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    return _int_from_env(env, "KAFKA_TOPIC_PARTITIONS", 6, 1, 1000)


def log_path(component: str) -> Path:
    return LOGS / f"{component}.log"
