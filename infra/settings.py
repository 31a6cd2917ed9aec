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

SERVICES = ("order", "inventory", "shipping")
# The Kafka cluster's nodes: `kafka` (node 1, with the ports of the design's table), then
# `kafka-2`, `kafka-3`, ... Node n's ports are node 1's (KAFKA_PORT, KAFKA_CONTROLLER_PORT,
# KAFKA_PROXIED_PORT, KAFKA_PROXY_PORT) plus 10 * (n - 1): kafka-2 listens on 9102.
KAFKA = "kafka"
KAFKA_NODE_STRIDE = 10
MAX_KAFKA_BROKERS = 5
DEFAULT_KAFKA_BROKERS = 3


class InfraError(RuntimeError):
    """A failure the user can act on; the CLI prints it without a traceback."""


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


def kafka_node_name(node: int) -> str:
    """``kafka`` for node 1, ``kafka-<n>`` for the others."""
    return KAFKA if node == 1 else f"{KAFKA}-{node}"


def kafka_node_number(name: str) -> int:
    """The node number of a Kafka component name (``kafka-2`` -> 2)."""
    return 1 if name == KAFKA else int(name.removeprefix(f"{KAFKA}-"))


# KAFKA_BROKERS is read once, when the launcher is imported: the cluster's size decides which
# components exist. Every process the launcher starts inherits it.
KAFKA_BROKERS = _int_from_env(
    os.environ, "KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS, 1, MAX_KAFKA_BROKERS
)
KAFKA_NODES = tuple(kafka_node_name(n) for n in range(1, KAFKA_BROKERS + 1))
INFRA = ("postgres", *KAFKA_NODES, "jaeger")
# The default set: what `start`, `run` and `status` mean without names.
COMPONENTS = INFRA + SERVICES
# Optional components, started only by name (the load suite's chaos needs them): the fault
# proxy in front of PostgreSQL and Kafka, and a second instance of each service.
TOXIPROXY = "toxiproxy"
SECOND_INSTANCES = tuple(f"{service}-2" for service in SERVICES)
OPTIONAL = (TOXIPROXY, *SECOND_INSTANCES)
# Every service process, first and second instances.
SERVICE_PROCESSES = (*SERVICES, *SECOND_INSTANCES)
# Toxiproxy gives each service process a lane of its own: its own proxy to PostgreSQL and
# to every Kafka node, so the nemesis can cut one instance off alone.
PROXY_LANES = SERVICE_PROCESSES
# Launched stage by stage, each stage at once: a second instance waits for its first, so
# two instances never run a fresh database's migrations at the same time.
STAGES = ((*INFRA, TOXIPROXY), SERVICES, SECOND_INSTANCES)
ALL_COMPONENTS = tuple(name for stage in STAGES for name in stage)

# Derived from the event catalog, so a new topic there is created here too; docker-compose.yml
# cannot import this and keeps its own list, which tests/static/test_compose.py checks.
TOPICS = tuple(dict.fromkeys(spec.topic for spec in registered()))
DLQ_TOPICS = tuple(f"{service}.dlq" for service in SERVICES)


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
        """The main port of a component (``order-2``, ``kafka-2`` too): the one its readiness
        is judged on."""
        if component.startswith(f"{KAFKA}-"):
            return self.kafka_node(kafka_node_number(component)).client
        value = getattr(self, component.replace("-", "_"))
        assert isinstance(value, int)
        return value

    def kafka_node(self, node: int) -> KafkaNodePorts:
        """Node ``node``'s ports (1-based): node 1's plus ``KAFKA_NODE_STRIDE * (node - 1)``."""
        offset = KAFKA_NODE_STRIDE * (node - 1)
        lanes = range(len(PROXY_LANES))
        return KafkaNodePorts(
            client=self.kafka + offset,
            controller=self.kafka_controller + offset,
            lanes=tuple(self.kafka_proxied + offset + lane for lane in lanes),
            proxies=tuple(self.kafka_proxy + offset + lane for lane in lanes),
        )

    def postgres_lane(self, lane: str) -> int:
        """Toxiproxy's port to PostgreSQL for service process ``lane``."""
        return self.postgres_proxy + PROXY_LANES.index(lane)

    def kafka_lane(self, lane: str) -> str:
        """The bootstrap list through Toxiproxy for service process ``lane``: its proxy to
        every node."""
        index = PROXY_LANES.index(lane)
        nodes = range(1, KAFKA_BROKERS + 1)
        return ",".join(f"{HOST}:{self.kafka_node(n).proxies[index]}" for n in nodes)

    def bootstrap_servers(self) -> str:
        """Every node's client listener: what clients bootstrap from (any one is enough,
        the list survives the loss of any)."""
        nodes = range(1, KAFKA_BROKERS + 1)
        return ",".join(f"{HOST}:{self.kafka_node(n).client}" for n in nodes)

    def every_port(self) -> dict[int, str]:
        """Every port the suite may bind, derived ones included, with a name for each."""
        named = {PORT_VARIABLES[f][0]: getattr(self, f) for f in PORT_VARIABLES}
        for node in range(2, KAFKA_BROKERS + 1):
            ports = self.kafka_node(node)
            named[f"{kafka_node_name(node)} client"] = ports.client
            named[f"{kafka_node_name(node)} controller"] = ports.controller
        for node in range(1, KAFKA_BROKERS + 1):
            ports = self.kafka_node(node)
            for lane, listener, proxy in zip(PROXY_LANES, ports.lanes, ports.proxies, strict=True):
                if (node, lane) != (1, PROXY_LANES[0]):  # those are the variables' own
                    named[f"{kafka_node_name(node)} lane {lane}"] = listener
                    named[f"{kafka_node_name(node)} proxy for {lane}"] = proxy
        for lane in PROXY_LANES[1:]:
            named[f"postgres proxy for {lane}"] = self.postgres_lane(lane)
        seen: dict[int, str] = {}
        for name, port in named.items():
            if port in seen:
                raise InfraError(f"{seen[port]} and {name} are both {port}; give each its own port")
            seen[port] = name
        return seen


@dataclass(frozen=True)
class KafkaNodePorts:
    """One Kafka node's ports: its client listener (services, tools, the other nodes), its
    controller listener (the KRaft quorum), and per proxy lane a listener that Toxiproxy
    fronts and the proxy port that listener advertises."""

    client: int
    controller: int
    lanes: tuple[int, ...]
    proxies: tuple[int, ...]


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
    # Toxiproxy's API, and the proxies it serves, one lane per service process (order,
    # inventory, shipping, order-2, ...: the first at these ports, the next ones above them):
    # PostgreSQL's, and to each Kafka node a proxy in front of that node's listener for the
    # lane (KAFKA_PROXIED_PORT + lane, which advertises the proxy's address).
    "toxiproxy": ("TOXIPROXY_PORT", 8474),
    "postgres_proxy": ("POSTGRES_PROXY_PORT", 15432),
    "kafka_proxy": ("KAFKA_PROXY_PORT", 19092),
    "kafka_proxied": ("KAFKA_PROXIED_PORT", 9094),
    "order_2": ("ORDER_2_PORT", 8011),
    "inventory_2": ("INVENTORY_2_PORT", 8012),
    "shipping_2": ("SHIPPING_2_PORT", 8013),
}


def ports(environ: Mapping[str, str] | None = None) -> Ports:
    """Resolve every port from the environment (or ``environ``), falling back to defaults."""
    env = os.environ if environ is None else environ
    values = {
        field: _int_from_env(env, variable, default, 1, 65535)
        for field, (variable, default) in PORT_VARIABLES.items()
    }
    resolved = Ports(**values)
    # Two components on one port would make the second fail with a confusing bind error.
    resolved.every_port()
    return resolved


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
