"""Kafka 4.x in KRaft mode: a cluster of KAFKA_BROKERS nodes (3 by default), each broker and
controller at once, every topic replicated and created up front.

Node 1 is the component ``kafka``, node n ``kafka-<n>``: each its own ports, folder
(``.state/kafka``, ``.state/kafka-2``, ...), log and pid, so each can be stopped or killed
alone (``python -m infra kill kafka-2``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from infra import process
from infra.base import Component, Launch
from infra.console import say
from infra.install import KAFKA_LIBS, install
from infra.settings import (
    DLQ_TOPICS,
    HOST,
    KAFKA_BROKERS,
    MAX_KAFKA_BROKERS,
    PROXY_LANES,
    STATE,
    TOPICS,
    InfraError,
    Ports,
    kafka_node_name,
    topic_partitions,
)
from infra.settings import ports as settings_ports

CONSUMER_OFFSETS = "__consumer_offsets"

KAFKA_STATE = STATE / "kafka"  # node 1's folder; node n's is .state/kafka-<n>
# The cluster's identity, written when its nodes' storage is formatted: the cluster id, each
# node's metadata directory id and the controller ports. Any change formats every node again.
CLUSTER_STAMP = KAFKA_STATE / "cluster.json"
TOPIC_ALREADY_EXISTS = 36
CLUSTER_TIMEOUT = 90.0  # every broker registered and every replica in sync, after a start
T = TypeVar("T")

# Loggers that repeat every config value or each partition change at INFO.
QUIET_LOGGERS = (
    "org.apache.kafka",
    "kafka.log",
    "kafka.cluster",
    "kafka.coordinator",
    "kafka.controller",
    "kafka.network",
    "kafka.raft",
    "kafka.server.metadata",
    "kafka.server.ReplicaFetcherManager",
    "kafka.server.ReplicaAlterLogDirsManager",
    "kafka.request.logger",
    "state.change.logger",
)


@dataclass(frozen=True)
class Replication:
    """How many copies the cluster keeps and how many must acknowledge a write."""

    factor: int
    min_insync: int


def replication(brokers: int = KAFKA_BROKERS) -> Replication:
    """Three copies, two in sync for a write (``acks=all``), on three or more brokers: one
    broker may die with no acknowledged write lost and writes going on. Fewer brokers keep
    what they can (``KAFKA_BROKERS=1``: one copy)."""
    factor = min(brokers, 3)
    return Replication(factor=factor, min_insync=max(factor - 1, 1))


class Kafka(Component):
    """One node of the KRaft cluster, broker and controller at once (``process.roles``)."""

    ready_timeout = 90.0

    def __init__(self, node: int) -> None:
        self.node = node
        self.name = kafka_node_name(node)
        self.state = STATE / self.name
        self.properties = self.state / "server.properties"
        self.log4j = self.state / "log4j2.properties"

    def main_port(self, ports: Ports) -> int:
        return ports.kafka_node(self.node).client

    def all_ports(self, ports: Ports) -> tuple[int, ...]:
        node = ports.kafka_node(self.node)
        return (node.client, node.controller, *node.lanes)

    def install(self) -> None:
        install(["kafka"])

    def prepare(self, ports: Ports) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(server_properties(self.node, ports))
        self.log4j.write_text(_log4j_properties())
        _format_cluster(ports)

    def launch(self, ports: Ports) -> Launch:
        argv = [
            "java",
            "-Xmx512m",
            "-Xms256m",
            "-XX:+ExitOnOutOfMemoryError",
            # A small heap on two cores: the serial collector cost each broker a fifth less
            # CPU per order at 10 orders/s than the default G1 (docs/benchmark.md).
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            _classpath(),
            "kafka.Kafka",
            str(self.properties),
        ]
        return Launch(argv=argv, env=dict(os.environ))

    def is_ready(self, ports: Ports) -> bool:
        """This node answers metadata requests and counts itself among the brokers."""
        address = f"{HOST}:{self.main_port(ports)}"
        try:
            brokers = run_sync(lambda: asyncio.wait_for(_broker_ids(address), timeout=5))
        except Exception:  # any failure just means "not yet"
            return False
        return self.node in brokers

    def after_ready(self, ports: Ports) -> None:
        run_sync(lambda: ensure_cluster(ports))


def run_sync(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside an event loop.

    Async tests call the synchronous API (start, kill) from a running loop, where
    asyncio.run() is refused: there the coroutine gets its own loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine())
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(lambda: asyncio.run(coroutine())).result()


def bootstrap_servers(ports: Ports) -> str:
    """Every node's client listener, comma-separated: clients take the whole list."""
    return ports.bootstrap_servers()


def _classpath() -> str:
    # Java expands the trailing `*` itself: every jar of the folder.
    return str(KAFKA_LIBS / "*")


def lane_listener(lane: str) -> str:
    """The listener name of a proxy lane: ``order-2`` -> ``LANE_ORDER_2``."""
    return "LANE_" + lane.upper().replace("-", "_")


def controller_quorum(ports: Ports, brokers: int = KAFKA_BROKERS) -> str:
    nodes = range(1, brokers + 1)
    return ",".join(f"{HOST}:{ports.kafka_node(n).controller}" for n in nodes)


def server_properties(node: int, ports: Ports, brokers: int = KAFKA_BROKERS) -> str:
    """Node ``node``'s configuration in a cluster of ``brokers``, written before every start."""
    own = ports.kafka_node(node)
    copies = replication(brokers)
    lanes = list(zip(PROXY_LANES, own.lanes, own.proxies, strict=True))
    settings = {
        # Broker and controller in one process: a quorum of three controllers without three
        # more JVMs on a small machine (docs/operations.md#the-kafka-cluster has the figures).
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.bootstrap.servers": controller_quorum(ports, brokers),
        # PLAINTEXT: clients and the other nodes, direct. Each LANE_* listener sits behind
        # one Toxiproxy proxy (one service process's way to this node) and advertises the
        # proxy's address, so a client that bootstraps through its proxies keeps talking
        # through them and feels their faults, while everything else stays direct.
        "listeners": ",".join(
            [
                f"PLAINTEXT://{HOST}:{own.client}",
                f"CONTROLLER://{HOST}:{own.controller}",
                *(f"{lane_listener(lane)}://{HOST}:{port}" for lane, port, _ in lanes),
            ]
        ),
        "advertised.listeners": ",".join(
            [
                f"PLAINTEXT://{HOST}:{own.client}",
                f"CONTROLLER://{HOST}:{own.controller}",
                *(f"{lane_listener(lane)}://{HOST}:{proxy}" for lane, _, proxy in lanes),
            ]
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(
            ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
            + [f"{lane_listener(lane)}:PLAINTEXT" for lane in PROXY_LANES]
        ),
        # The lanes carry one service process each: one network thread is plenty.
        **{
            f"listener.name.{lane_listener(lane).lower()}.num.network.threads": "1"
            for lane in PROXY_LANES
        },
        "log.dirs": str(STATE / kafka_node_name(node) / "data"),
        "num.partitions": str(topic_partitions()),
        # Every topic, internal ones included, kept on `factor` nodes; a write is acknowledged
        # (acks=all) once `min_insync` copies have it, and refused below that rather than
        # accepted by too few. A replica that fell out of sync never becomes leader: that
        # would drop writes already acknowledged.
        "default.replication.factor": str(copies.factor),
        "min.insync.replicas": str(copies.min_insync),
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": str(copies.factor),
        "transaction.state.log.replication.factor": str(copies.factor),
        "transaction.state.log.min.isr": str(copies.min_insync),
        "share.coordinator.state.topic.replication.factor": str(copies.factor),
        "share.coordinator.state.topic.min.isr": str(copies.min_insync),
        # Fewer internal partitions than the defaults (50): a much faster first start.
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.num.partitions": "6",
        # Tests start consumers often; waiting 3 s for more members only slows them down.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created by the launcher with the right partition count, never by typo.
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        # A node that stops heartbeating to the controller is fenced after this long: its
        # partitions get new leaders, and after a SIGKILL the restarted node waits for its
        # previous registration to expire. 4 s instead of 9: faster failover, faster restarts.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
    }
    header = "# Generated by `python -m infra` on every start: edit infra/kafka.py instead.\n"
    return header + "".join(f"{key}={value}\n" for key, value in settings.items())


def _log4j_properties() -> str:
    lines = [
        "# Generated by `python -m infra`: console (the component log file), INFO, quiet.",
        "status = warn",
        # Kafka stops log4j itself; a second hook only warns that the JVM is exiting.
        "shutdownHook = disable",
        "appender.console.type = Console",
        "appender.console.name = STDOUT",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.stdout.ref = STDOUT",
    ]
    for index, logger in enumerate(QUIET_LOGGERS):
        lines += [f"logger.quiet{index}.name = {logger}", f"logger.quiet{index}.level = WARN"]
    return "\n".join(lines) + "\n"


def _format_cluster(ports: Ports) -> None:
    """Format every node's storage as one cluster, unless it already is this cluster.

    All nodes share a cluster id and start with the same voter set, each voter named by its
    node id, controller endpoint and the id of its metadata directory (``--initial-controllers``,
    the dynamic quorum of KIP-853). A different cluster size or controller port formats every
    node again, which needs them all stopped."""
    stamp = {
        "brokers": KAFKA_BROKERS,
        "controllers": controller_quorum(ports),
    }
    nodes = range(1, KAFKA_BROKERS + 1)
    formatted = all((_data(n) / "meta.properties").is_file() for n in nodes)
    previous = _read_stamp()
    if formatted and previous is not None and _same_cluster(previous, stamp):
        return
    running = [name for name in _every_node_name() if process.running_pid(name) is not None]
    if running:
        raise InfraError(
            f"the Kafka cluster must be formatted again (KAFKA_BROKERS or a controller port "
            f"changed) but {', '.join(running)} still run: `make stop` first"
        )
    if previous is not None:
        say(
            f"    note: the Kafka cluster changed ({previous.get('brokers')} -> {KAFKA_BROKERS} "
            "brokers, or its controller ports); formatting every node again"
        )
    for name in _every_node_name():
        shutil.rmtree(STATE / name / "data", ignore_errors=True)
    cluster_id = _kafka_uuid()
    directories = {n: _kafka_uuid() for n in nodes}
    voters = ",".join(
        f"{n}@{HOST}:{ports.kafka_node(n).controller}:{directories[n]}" for n in nodes
    )
    say(f"    formatting Kafka storage of {KAFKA_BROKERS} node(s) (cluster id {cluster_id})")
    for node in nodes:
        properties = STATE / kafka_node_name(node) / "server.properties"
        properties.parent.mkdir(parents=True, exist_ok=True)
        properties.write_text(server_properties(node, ports))
        argv = ["java", "-cp", _classpath(), "kafka.tools.StorageTool", "format"]
        argv += ["-t", cluster_id, "-c", str(properties), "--initial-controllers", voters]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise InfraError(
                f"kafka StorageTool format of node {node} failed:\n{result.stdout}{result.stderr}"
            )
    CLUSTER_STAMP.parent.mkdir(parents=True, exist_ok=True)
    CLUSTER_STAMP.write_text(json.dumps({**stamp, "cluster_id": cluster_id}) + "\n")


def _same_cluster(previous: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(previous.get(key) == value for key, value in wanted.items())


def _data(node: int) -> Path:
    return STATE / kafka_node_name(node) / "data"


def _every_node_name() -> list[str]:
    """Every node this launcher may have started, whatever KAFKA_BROKERS is now."""
    return [kafka_node_name(n) for n in range(1, MAX_KAFKA_BROKERS + 1)]


def _kafka_uuid() -> str:
    """A random id in Kafka's text form (``Uuid.toString``: URL-safe base64, no padding)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _read_stamp() -> dict[str, Any] | None:
    try:
        value = json.loads(CLUSTER_STAMP.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    # While a node boots every probe logs a connection error; they are expected.
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.asynccontextmanager
async def admin_client(ports: Ports | None = None, *, address: str | None = None) -> Any:
    """An admin client of the whole cluster (or of the one node at ``address``)."""
    with _quiet_aiokafka():
        client = AIOKafkaAdminClient(
            bootstrap_servers=address or bootstrap_servers(ports or settings_ports()),
            request_timeout_ms=10000,
        )
        await client.start()
        try:
            yield client
        finally:
            await client.close()


async def _broker_ids(address: str) -> set[int]:
    async with admin_client(address=address) as client:
        cluster = await client.describe_cluster()
        return {broker["node_id"] for broker in cluster["brokers"]}


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int  # -1 while it has none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def partition_states(ports: Ports, topics: Sequence[str] = ()) -> list[PartitionState]:
    """Leader, replicas and in-sync replicas of every partition of ``topics`` (default: the
    suite's topics, dead-letter topics and the consumer offsets)."""
    wanted = list(topics) or [*TOPICS, *DLQ_TOPICS, CONSUMER_OFFSETS]
    async with admin_client(ports) as client:
        described = await client.describe_topics(wanted)
    return [
        PartitionState(
            topic["topic"],
            p["partition"],
            p["leader"],
            tuple(p["replicas"]),
            tuple(p["isr"]),
        )
        for topic in described
        if not topic["error_code"]
        for p in topic["partitions"]
    ]


def active_controller() -> int | None:
    """The node id of the KRaft quorum's leader (the active controller), as the running nodes
    last recorded it in their quorum-state file; None when none knows one.

    Clients cannot ask: a KRaft broker answers client requests with a random broker as
    "controller". The quorum's own record is on disk beside each node's metadata log."""
    best: tuple[int, int] | None = None  # (epoch, leader)
    for node in range(1, KAFKA_BROKERS + 1):
        if process.running_pid(kafka_node_name(node)) is None:
            continue
        try:
            state = json.loads((_data(node) / "__cluster_metadata-0" / "quorum-state").read_text())
        except (OSError, ValueError):
            continue
        leader, epoch = state.get("leaderId", -1), state.get("leaderEpoch", -1)
        if isinstance(leader, int) and leader > 0 and (best is None or epoch > best[0]):
            best = (epoch, leader)
    return None if best is None else best[1]


def cluster_summary(ports: Ports) -> str:
    """One line for `status`: the nodes, the active controller, the replicas out of sync."""
    head = f"kafka cluster: {KAFKA_BROKERS} node(s)"
    controller = active_controller()
    if controller is None:
        return f"{head}, no active controller known (not running?)"
    try:
        partitions = run_sync(lambda: asyncio.wait_for(partition_states(ports), timeout=5))
    except Exception as exc:  # status must print whatever the cluster's state
        return f"{head}, controller {kafka_node_name(controller)}; partitions unknown ({exc!r})"
    lagging = [p for p in partitions if not _in_sync(p)]
    return (
        f"{head}, controller {kafka_node_name(controller)}, {replication().factor} replicas "
        f"(min.insync.replicas={replication().min_insync}); {len(partitions)} partitions, "
        f"{len(lagging)} not fully in sync"
    )


async def ensure_cluster(ports: Ports, timeout: float = CLUSTER_TIMEOUT) -> None:
    """Create the suite's topics that are missing, then wait until every node is registered
    and every partition has its full set of in-sync replicas (what "ready" means for a
    cluster: a write acknowledged now has every copy it should)."""
    deadline = asyncio.get_running_loop().time() + timeout
    wanted = set(range(1, KAFKA_BROKERS + 1))
    while (registered := await _registered(ports)) != wanted:
        if asyncio.get_running_loop().time() > deadline:
            missing = ", ".join(kafka_node_name(n) for n in sorted(wanted - registered))
            raise InfraError(f"Kafka nodes not registered after {timeout:.0f} s: {missing}")
        await asyncio.sleep(0.5)
    while True:
        try:  # right after a restart a node may refuse requests a moment longer
            await ensure_topics(ports)
            break
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    while lagging := [p for p in await partition_states(ports) if not _in_sync(p)]:
        if asyncio.get_running_loop().time() > deadline:
            sample = ", ".join(f"{p.topic}[{p.partition}] isr {list(p.isr)}" for p in lagging[:5])
            raise InfraError(
                f"{len(lagging)} Kafka partitions without every replica in sync after "
                f"{timeout:.0f} s: {sample}"
            )
        await asyncio.sleep(0.5)


def _in_sync(partition: PartitionState) -> bool:
    copies = replication().factor
    return partition.leader >= 0 and len(partition.isr) == len(partition.replicas) == copies


async def _registered(ports: Ports) -> set[int]:
    try:
        return await _broker_ids(bootstrap_servers(ports))
    except Exception:  # no node answers yet
        return set()


async def ensure_topics(ports: Ports) -> None:
    """Create the suite's topics that are missing; warn about a partition count mismatch."""
    partitions = topic_partitions()
    wanted = TOPICS + DLQ_TOPICS
    async with admin_client(ports) as client:
        existing = set(await client.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await _create(client, missing, partitions)
            copies = replication()
            say(
                f"    created topics {', '.join(missing)} ({partitions} partitions, "
                f"{copies.factor} replicas, min.insync.replicas={copies.min_insync})"
            )
        await _await_group_coordinator(client)
        for topic in await client.describe_topics(list(wanted)):
            count = len(topic["partitions"])
            if count != partitions:
                say(
                    f"    warning: topic {topic['topic']} has {count} partitions, "
                    f"KAFKA_TOPIC_PARTITIONS={partitions} (`make clean` to recreate)"
                )


async def _await_group_coordinator(client: Any) -> None:
    """Have the cluster create __consumer_offsets now, and wait until it serves groups.

    Otherwise the first consumer of every fresh cluster (each test run) spends its first
    seconds on "coordinator not available" errors.
    """
    for attempt in range(120):
        try:
            await client.find_coordinator("infra-launcher")
        except Exception:  # the offsets topic is still being created
            if attempt == 119:
                raise
            await asyncio.sleep(0.25)
        else:
            return


async def _create(client: Any, names: list[str], partitions: int) -> None:
    copies = replication()
    configs = {"min.insync.replicas": str(copies.min_insync)}
    topics = [NewTopic(name, partitions, copies.factor, topic_configs=configs) for name in names]
    # Right after boot the controller may not accept creations yet: retry briefly.
    for attempt in range(20):
        response = await client.create_topics(topics, timeout_ms=10000)
        errors = [
            (topic, code, message)
            for topic, code, message in response.topic_errors
            if code not in (0, TOPIC_ALREADY_EXISTS)
        ]
        if not errors:
            return
        if attempt == 19:
            raise InfraError(f"creating Kafka topics failed: {errors}")
        await asyncio.sleep(0.5)
