"""Kafka 4.x in KRaft mode: one combined broker+controller node, topics created up front."""

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
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.base import Component, Launch
from infra.console import say
from infra.install import KAFKA_LIBS, install
from infra.settings import DLQ_TOPICS, HOST, STATE, TOPICS, InfraError, Ports, topic_partitions

KAFKA_STATE = STATE / "kafka"
DATA = KAFKA_STATE / "data"
SERVER_PROPERTIES = KAFKA_STATE / "server.properties"
LOG4J = KAFKA_STATE / "log4j2.properties"
# Records the controller port the storage was formatted with: the standalone voter set
# stores that endpoint, so a different port means formatting again.
FORMAT_STAMP = KAFKA_STATE / "formatted.json"
TOPIC_ALREADY_EXISTS = 36
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


class Kafka(Component):
    name = "kafka"
    ready_timeout = 90.0

    def main_port(self, ports: Ports) -> int:
        return ports.kafka

    def all_ports(self, ports: Ports) -> tuple[int, ...]:
        return (ports.kafka, ports.kafka_controller, ports.kafka_proxied)

    def install(self) -> None:
        install(["kafka"])

    def prepare(self, ports: Ports) -> None:
        KAFKA_STATE.mkdir(parents=True, exist_ok=True)
        SERVER_PROPERTIES.write_text(server_properties(ports))
        LOG4J.write_text(_log4j_properties())
        _format_storage(ports)

    def launch(self, ports: Ports) -> Launch:
        argv = [
            "java",
            "-Xmx512m",
            "-Xms256m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            _classpath(),
            "kafka.Kafka",
            str(SERVER_PROPERTIES),
        ]
        return Launch(argv=argv, env=dict(os.environ))

    def is_ready(self, ports: Ports) -> bool:
        try:
            run_sync(lambda: asyncio.wait_for(_list_topics(ports), timeout=5))
        except Exception:  # any failure just means "not yet"
            return False
        return True

    def after_ready(self, ports: Ports) -> None:
        run_sync(lambda: ensure_topics(ports))


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
    return f"{HOST}:{ports.kafka}"


def _classpath() -> str:
    # Java expands the trailing `*` itself: every jar of the folder.
    return str(KAFKA_LIBS / "*")


def server_properties(ports: Ports) -> str:
    """The broker's configuration, written before every start."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{HOST}:{ports.kafka_controller}",
        # PROXIED is the listener behind Toxiproxy's "kafka" proxy: it advertises the proxy's
        # address, so a client that bootstraps through the proxy keeps talking through it
        # (and feels its faults), while PLAINTEXT stays direct for everyone else.
        "listeners": ",".join(
            [
                f"PLAINTEXT://{HOST}:{ports.kafka}",
                f"CONTROLLER://{HOST}:{ports.kafka_controller}",
                f"PROXIED://{HOST}:{ports.kafka_proxied}",
            ]
        ),
        "advertised.listeners": (
            f"PLAINTEXT://{HOST}:{ports.kafka},PROXIED://{HOST}:{ports.kafka_proxy}"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT"
        ),
        "log.dirs": str(DATA),
        "num.partitions": str(topic_partitions()),
        # One node: every internal topic has a single replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Fewer internal partitions than the defaults (50): a much faster first start.
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.num.partitions": "6",
        # Tests start consumers often; waiting 3 s for more members only slows them down.
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created by the launcher with the right partition count, never by typo.
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        # After a SIGKILL the restarted broker waits for its previous registration to expire
        # (default 9 s): a shorter session makes chaos-test restarts that much faster.
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


def _format_storage(ports: Ports) -> None:
    stamp = {"controller_port": ports.kafka_controller}
    formatted = (DATA / "meta.properties").is_file()
    if formatted and _read_stamp() == stamp:
        return
    if formatted:
        say("    note: KAFKA_CONTROLLER_PORT changed since the storage was formatted; reformatting")
    shutil.rmtree(DATA, ignore_errors=True)
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    argv = ["java", "-cp", _classpath(), "kafka.tools.StorageTool", "format", "--standalone"]
    argv += ["-t", cluster_id, "-c", str(SERVER_PROPERTIES)]
    say(f"    formatting Kafka storage (cluster id {cluster_id})")
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InfraError(f"kafka StorageTool format failed:\n{result.stdout}{result.stderr}")
    FORMAT_STAMP.write_text(json.dumps(stamp) + "\n")


def _read_stamp() -> dict[str, Any] | None:
    try:
        value = json.loads(FORMAT_STAMP.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    # While the broker boots every probe logs a connection error; they are expected.
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.asynccontextmanager
async def admin_client(ports: Ports) -> Any:
    with _quiet_aiokafka():
        client = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers(ports), request_timeout_ms=10000
        )
        await client.start()
        try:
            yield client
        finally:
            await client.close()


async def _list_topics(ports: Ports) -> list[str]:
    async with admin_client(ports) as client:
        topics: list[str] = await client.list_topics()
        return topics


async def ensure_topics(ports: Ports) -> None:
    """Create the suite's topics that are missing; warn about a partition count mismatch."""
    partitions = topic_partitions()
    wanted = TOPICS + DLQ_TOPICS
    async with admin_client(ports) as client:
        existing = set(await client.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await _create(client, missing, partitions)
            say(f"    created topics {', '.join(missing)} ({partitions} partitions)")
        await _await_group_coordinator(client)
        for topic in await client.describe_topics(list(wanted)):
            count = len(topic["partitions"])
            if count != partitions:
                say(
                    f"    warning: topic {topic['topic']} has {count} partitions, "
                    f"KAFKA_TOPIC_PARTITIONS={partitions} (delete .state/kafka to recreate)"
                )


async def _await_group_coordinator(client: Any) -> None:
    """Have the broker create __consumer_offsets now, and wait until it serves groups.

    Otherwise the first consumer of every fresh cluster (each test run) spends its first
    seconds on "coordinator not available" errors.
    """
    for attempt in range(60):
        try:
            await client.find_coordinator("infra-launcher")
        except Exception:  # the offsets topic is still being created
            if attempt == 59:
                raise
            await asyncio.sleep(0.25)
        else:
            return


async def _create(client: Any, names: list[str], partitions: int) -> None:
    topics = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
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
