"""The chaos nemesis: during a load run, at seeded random moments, one fault or two at once.

The actions (``RunInfo.actions`` names which ones a run allows):

- ``kill``: SIGKILL one service process (order, inventory or shipping), 0-3 s down, start it.
- ``kafka``: restart the whole Kafka cluster, every node (SIGKILL or graceful stop), wait until
  the services are ready: the full outage.
- ``postgres``: restart PostgreSQL (SIGKILL or graceful stop), wait until the services are ready.
- ``pause``: SIGSTOP one service past its consumer session timeout (its group rebalances), SIGCONT.
- ``scale``: run a second instance of one service for 15-30 s (partitions move there and back).
- ``latency``: 100-300 ms latency (with jitter) both ways on every service's way to PostgreSQL,
  or to Kafka, 5-15 s.
- ``reset``: connections reset (1-3 s) or the proxies disabled (2-5 s), PostgreSQL's or Kafka's.
- ``isolate``: one service process (a second instance too, when one runs) loses Kafka alone,
  every Kafka proxy of its lane disabled for 5-15 s (and, drawn, its PostgreSQL proxy).
- ``duplicates``: re-publish 5-30 records of the run, byte for byte, to their own partitions.
- ``replay``: re-publish the run's first 10-30 records of every partition, in their order: an
  early stretch of the log delivered again, as after a consumer group's offsets were reset.
  Old events arrive after newer ones of their aggregates (stale levels of a stock, say).
- ``poison``: publish 1-3 poison records (not JSON, not an envelope, an unknown schema version).
- ``failpoint:<service>:<failpoint>[:<delay>]``: restart the service with that failpoint armed,
  wait until it kills the process, start it again without (the pitfall runs use these).

On a cluster of three or more nodes, faults of one Kafka node too (:data:`NODE_ACTIONS`):

- ``leader``: SIGKILL the leader of a random partition of an event topic, 3-10 s down, start it.
- ``controller``: SIGKILL the active controller (the KRaft quorum's leader), 3-10 s down, start it.
- ``broker-pause``: SIGSTOP one node for 8-15 s, past its broker session timeout (it is fenced,
  its partitions get new leaders), SIGCONT, wait until every replica is in sync again.
- ``broker-cut``: one node cut off from every client (its proxy in every lane disabled), 5-15 s.

A **pair**: now and then (``pair_chance``, 1/3 by default) a second action runs alongside, begun
0-3 s into the first; never the same action twice, never two broker faults
(:data:`BROKER_FAULTS`: with a second node down the cluster loses its quorum and
``min.insync.replicas``, by design). The pair has ``start``/``end`` entries of its own.

Every action is written to ``nemesis.jsonl`` as a ``start`` and an ``end`` (or ``error``)
entry; what was published goes to ``injected.jsonl``, with where it landed and, for poison,
the services that must dead-letter it. An action that fails is logged and the nemesis goes
on; an action in progress when the nemesis is told to stop cuts its wait short and undoes
itself. :meth:`Nemesis.heal` undoes whatever is left, whatever state the run is in.

The nemesis runs in the runner's event loop; everything it does to the world, and every
question it asks the Kafka cluster, goes through an :class:`Actuator` (:class:`LiveActuator`
for real, a recording fake in the tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, Protocol
from uuid import uuid4

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra import components
from infra.jaeger import http_ok
from infra.kafka import active_controller, partition_states
from infra.services import router_of
from infra.settings import (
    HOST,
    INFRA,
    KAFKA_BROKERS,
    KAFKA_NODES,
    PROXY_LANES,
    SECOND_INSTANCES,
    SERVICE_PROCESSES,
    SERVICES,
    kafka_node_name,
    ports,
    topic_partitions,
)
from infra.toxiproxy import POSTGRES_PROXY, ToxiproxyApi, proxy_name
from load.runinfo import Injected, NemesisEntry, RunDir, RunInfo, now
from shared.contracts import current_events
from shared.contracts.envelope import Envelope, MalformedEnvelopeError, parse_envelope

log = logging.getLogger(__name__)

# The faults of one Kafka node: offered on a cluster of three or more, where one node down
# leaves two copies of every partition in sync (on one broker they are the `kafka` action).
NODE_ACTIONS: tuple[str, ...] = ("leader", "controller", "broker-pause", "broker-cut")
# At most one of these at a time: a second node down loses the quorum and min.insync.replicas.
BROKER_FAULTS = frozenset({"kafka", *NODE_ACTIONS})


def actions_for(brokers: int) -> tuple[str, ...]:
    """The actions offered on a Kafka cluster of ``brokers`` nodes (all of them by default)."""
    return (
        "kill",
        "kafka",
        "postgres",
        "pause",
        "scale",
        "latency",
        "reset",
        "isolate",
        "duplicates",
        "replay",
        "poison",
        *(NODE_ACTIONS if brokers >= 3 else ()),
    )


ACTIONS = actions_for(KAFKA_BROKERS)
# The launcher's default set: what a healed run has running, every Kafka node included (not
# toxiproxy, not second instances; toxiproxy is the runner's and stays up).
DEFAULT_COMPONENTS: tuple[str, ...] = (*INFRA, *SERVICES)
TOPICS: tuple[str, ...] = ("orders", "inventory", "shipping", "stock")
# What `latency` and `reset` hit: every service process's way to PostgreSQL, or to Kafka.
PROXY_GROUPS: dict[str, tuple[str, ...]] = {"postgres": (POSTGRES_PROXY,), "kafka": KAFKA_NODES}

# shared.kafka.new_consumer's session_timeout_ms (not a setting; a test keeps them equal): a
# consumer silent this long is expelled from its group.
SESSION_TIMEOUT_SECONDS = 10.0
PAUSE_SECONDS = SESSION_TIMEOUT_SECONDS + 5.0
# infra.kafka's broker.session.timeout.ms (a test keeps them equal): a node silent this long
# is fenced and its partitions led elsewhere. `broker-pause` holds a node 8-15 s.
BROKER_SESSION_TIMEOUT_SECONDS = 4.0
PAIR_CHANCE = 1 / 3
PAIR_LAG = 3.0  # the second action of a pair begins up to this long into the first
READY_TIMEOUT = 120.0  # services back after a broker or database restart
IN_SYNC_TIMEOUT = 90.0  # every replica in sync again after a Kafka node's fault
FAILPOINT_TIMEOUT = 30.0  # an armed service must have died by then

PoisonKind = Literal["not_json", "not_envelope", "unknown_version"]
POISON_KINDS: tuple[PoisonKind, ...] = ("not_json", "not_envelope", "unknown_version")
UNKNOWN_VERSION = 99


class NemesisError(RuntimeError):
    """An action could not do or undo what it should."""


# --- poison ----------------------------------------------------------------------------------


@cache
def _handled() -> dict[str, frozenset[str]]:
    """Service -> the event types its router handles (imported late: the services' code)."""
    types = [spec.event_type for spec in current_events()]
    return {
        service: frozenset(t for t in types if router_of(service).handler_for(t) is not None)
        for service in SERVICES
    }


def _topic_of(event_type: str) -> str:
    return next(spec.topic for spec in current_events() if spec.event_type == event_type)


def subscribers(topic: str) -> list[str]:
    """The services consuming ``topic``: a service subscribes to the topics of the event
    types it handles (``Router.topics``)."""
    return [s for s, types in _handled().items() if any(_topic_of(t) == topic for t in types)]


def handled_types(topic: str) -> list[str]:
    """The event types of ``topic`` that at least one service handles."""
    handled = set().union(*_handled().values())
    return sorted(
        s.event_type for s in current_events() if s.topic == topic and s.event_type in handled
    )


@dataclass(frozen=True)
class Poison:
    """One poison record. What the consumers do with each kind (shared/consumer.py,
    shared/processing.py, shared/contracts):

    - ``not_json`` and ``not_envelope``: ``parse_envelope`` raises ``MalformedEnvelopeError``
      and ``Applier.apply`` (:mod:`shared.consuming.applying`) dead-letters the record at once,
      in every service that consumes the topic, whatever it handles;
    - ``unknown_version``: a valid envelope of ``event_type`` at schema version 99 whose
      payload is no valid event. ``EventProcessor.decode`` returns None (ignored, the stream
      moved on) in a service with no handler for the type, before looking at the version;
      in a service with a handler, the topic being FORWARD compatible, the payload is read
      as the current model, fails, and ``InvalidPayloadError`` -> ``PermanentError`` is
      dead-lettered. So only the services handling the type dead-letter it. Its stream is
      its own (aggregate id = the key, sequence 1), so ignoring it parks nothing.
    """

    key: str
    topic: str  # the logical topic: orders, inventory, shipping, stock
    kind: PoisonKind
    event_type: str | None = None  # unknown_version: a type some consumer of the topic handles

    def value(self) -> bytes:
        if self.kind == "not_json":
            return f"not json: {self.key}".encode()
        if self.kind == "not_envelope":
            return json.dumps({"poison": self.key}).encode()
        return self.envelope().to_bytes()

    def envelope(self) -> Envelope:
        if self.event_type is None:
            raise ValueError("an unknown_version poison needs an event type")
        spec = next(s for s in current_events() if s.event_type == self.event_type)
        return Envelope(
            event_id=uuid4(),
            event_type=self.event_type,
            schema_version=UNKNOWN_VERSION,
            source="nemesis",
            aggregate_type=spec.aggregate_type,
            aggregate_id=self.key,
            sequence=1,
            occurred_at=datetime.now(UTC),
            correlation_id=self.key,
            payload={"poison": self.key},  # no field any version of any event requires
        )

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [("nemesis", self.kind.encode())]
        if self.kind == "unknown_version" and self.event_type is not None:
            headers += [
                ("event_type", self.event_type.encode()),
                ("schema_version", str(UNKNOWN_VERSION).encode()),
                ("correlation_id", self.key.encode()),
            ]
        return headers

    def expect_letters(self) -> list[str]:
        """The services that must dead-letter this record (see the class docstring)."""
        if self.kind == "unknown_version":
            return [s for s, types in _handled().items() if self.event_type in types]
        return subscribers(self.topic)


async def publish_poison(
    bootstrap: str, poisons: Sequence[Poison], *, topics: Mapping[str, str] | None = None
) -> list[Injected]:
    """Publish ``poisons``; ``topics`` maps a logical topic to the one written (tests)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    injected = []
    try:
        for poison in poisons:
            topic = (topics or {}).get(poison.topic, poison.topic)
            meta = await producer.send_and_wait(
                topic, poison.value(), key=poison.key.encode(), headers=poison.headers()
            )
            injected.append(
                Injected(
                    t=now(),
                    kind="poison",
                    topic=topic,
                    partition=meta.partition,
                    offset=meta.offset,
                    key=poison.key,
                    expect_letters=poison.expect_letters(),
                )
            )
    finally:
        await producer.stop()
    return injected


# --- duplicates ------------------------------------------------------------------------------


def _of_run(info: RunInfo, key: str, envelope: Envelope) -> bool:
    """A record of this run: in a flow its customers started, or a stock event of its SKUs.
    Never a poison record (an unknown_version one is an envelope)."""
    if key.startswith("poison-"):
        return False
    return envelope.correlation_id.startswith(f"load-{info.tag}-") or key in info.all_skus


async def _windows(
    consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, info: RunInfo, topics: Sequence[str]
) -> list[tuple[TopicPartition, int, int]]:
    """(partition, first, end) of the records published on ``topics`` since the run began."""
    # The producer's partitions_for waits for the topic's metadata; the consumer's
    # partitions_for_topic knows only topics it subscribed to.
    tps = [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(await producer.partitions_for(topic))
    ]
    if not tps:
        return []
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    windows = []
    for tp in tps:
        start = max(info.start_offsets.get(tp.topic, {}).get(tp.partition, 0), begin[tp])
        if end[tp] > start:
            windows.append((tp, start, end[tp]))
    return windows


def _positions(
    windows: Sequence[tuple[TopicPartition, int, int]], rng: random.Random, k: int
) -> dict[TopicPartition, list[int]]:
    """``k`` distinct offsets drawn uniformly over all windows, by partition, in order."""
    total = sum(end - start for _, start, end in windows)
    chosen: dict[TopicPartition, list[int]] = {}
    for drawn in sorted(rng.sample(range(total), min(k, total))):
        index = drawn
        for tp, start, end in windows:
            if index < end - start:
                chosen.setdefault(tp, []).append(start + index)
                break
            index -= end - start
    return chosen


def _first(
    windows: Sequence[tuple[TopicPartition, int, int]], k: int
) -> dict[TopicPartition, list[int]]:
    """The first ``k`` offsets of every window."""
    return {tp: list(range(start, min(start + k, end))) for tp, start, end in windows}


async def publish_duplicates(
    bootstrap: str,
    info: RunInfo,
    count: int,
    rng: random.Random,
    *,
    topics: Sequence[str] = TOPICS,
) -> list[Injected]:
    """Re-publish up to ``count`` records of the run (drawn among those on ``topics`` since
    its start offsets) to the same partition with the same key, value and headers."""
    # Drawn three times over: records of other flows and poison are passed over.
    return await _republish(
        bootstrap, info, topics, lambda windows: _positions(windows, rng, 3 * count), count
    )


async def publish_replay(
    bootstrap: str, info: RunInfo, count: int, *, topics: Sequence[str] = TOPICS
) -> list[Injected]:
    """Re-publish the run's first ``count`` records of every partition of ``topics`` (its
    own records among them), in their order, like :func:`publish_duplicates`."""
    return await _republish(bootstrap, info, topics, lambda windows: _first(windows, count))


async def _republish(
    bootstrap: str,
    info: RunInfo,
    topics: Sequence[str],
    choose: Callable[[list[tuple[TopicPartition, int, int]]], dict[TopicPartition, list[int]]],
    limit: int | None = None,
) -> list[Injected]:
    """Re-publish the run's records at the offsets ``choose`` picks from the run's windows,
    up to ``limit`` in all: same partition, key, value and headers, in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    injected: list[Injected] = []
    try:
        chosen = choose(await _windows(consumer, producer, info, topics))
        for tp, offsets in chosen.items():
            consumer.assign([tp])
            for offset in offsets:
                if len(injected) == limit:
                    return injected
                record = await _record_at(consumer, tp, offset)
                if record is None or record.key is None:
                    continue
                key = record.key.decode(errors="replace")
                try:
                    envelope = parse_envelope(record.value)
                except MalformedEnvelopeError:
                    continue
                if not _of_run(info, key, envelope):
                    continue
                meta = await producer.send_and_wait(
                    tp.topic,
                    record.value,
                    key=record.key,
                    partition=tp.partition,
                    headers=list(record.headers),
                )
                injected.append(
                    Injected(
                        t=now(),
                        kind="duplicate",
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=meta.offset,
                        key=key,
                        event_id=str(envelope.event_id),
                    )
                )
    finally:
        await consumer.stop()
        await producer.stop()
    return injected


async def _record_at(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, timeout: float = 5.0
) -> Any:
    """The record at ``offset`` (or the first after it), None if none comes."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
        for record in batch.get(tp, ()):
            if record.offset >= offset:
                return record
    return None


# --- the actuator ----------------------------------------------------------------------------


def proxies(targets: Sequence[str], lanes: Sequence[str] = PROXY_LANES) -> list[str]:
    """Toxiproxy's proxies from the service processes ``lanes`` to ``targets`` (``postgres``,
    Kafka nodes): ``proxies(KAFKA_NODES)`` is Kafka for everyone, ``proxies(["kafka-2"])`` one
    node cut off from every client, ``proxies(KAFKA_NODES, ["order-2"])`` one instance alone."""
    return [proxy_name(target, lane) for lane in lanes for target in targets]


class Actuator(Protocol):
    """What the nemesis does to the world, and what it asks the Kafka cluster. Component
    names are the launcher's ("order", "order-2", "kafka", "kafka-2", ...); proxies are
    Toxiproxy's ("postgres.order", "kafka-2.order-2", ...: :func:`proxies`)."""

    async def kill(self, name: str) -> None:
        """SIGKILL the component (and its process group)."""

    async def stop(self, *names: str) -> None:
        """Stop the components gracefully and together (SIGKILL after their timeout);
        idempotent."""

    async def start(self, *names: str, env: Mapping[str, str] | None = None) -> None:
        """Start the components not running, with ``env`` added to the environment of this
        start only; return once every one of them answers ready (raise if one does not)."""

    async def pid(self, name: str) -> int | None:
        """The component's pid (the leader of its process group), None when not running."""

    async def signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group led by ``pid``."""

    async def wait_ready(self, names: Sequence[str], timeout: float) -> None:
        """Return once every service named answers ``/ready``; raise after ``timeout``."""

    async def wait_gone(self, name: str, timeout: float) -> bool:
        """True once the component's process is gone; False after ``timeout``."""

    async def add_toxic(
        self,
        proxy: str,
        name: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        stream: str = "downstream",
    ) -> None: ...

    async def remove_toxic(self, proxy: str, name: str) -> None: ...

    async def set_enabled(self, proxy: str, enabled: bool) -> None: ...

    async def reset_toxics(self) -> None:
        """Every toxic removed and every proxy enabled."""

    async def partition_leader(self, topic: str, partition: int) -> str:
        """The Kafka node (its component name) leading ``topic``'s ``partition``; raise when
        it has none."""

    async def active_controller(self) -> str:
        """The Kafka node that is the active controller (the KRaft quorum's leader); raise
        when no running node knows one."""

    async def wait_in_sync(self, timeout: float) -> None:
        """Return once every partition of the suite's topics has a leader and every replica
        in sync; raise after ``timeout``."""

    async def duplicate(self, info: RunInfo, count: int, rng: random.Random) -> list[Injected]:
        """Re-publish up to ``count`` records of the run (see :func:`publish_duplicates`)."""

    async def replay(self, info: RunInfo, count: int) -> list[Injected]:
        """Re-publish the run's first ``count`` records per partition (:func:`publish_replay`)."""

    async def poison(self, poisons: Sequence[Poison]) -> list[Injected]:
        """Publish ``poisons`` (see :func:`publish_poison`)."""


class LiveActuator:
    """The real one: the launcher (:mod:`infra.components`), Toxiproxy and Kafka direct.

    The launcher's calls are blocking; they run in a thread, one at a time (its state lock
    is re-entrant per process, so it does not serialise two threads of one process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def _call(self, fn: Callable[[], None]) -> None:
        def locked() -> None:
            with self._lock:
                fn()

        await asyncio.to_thread(locked)

    async def kill(self, name: str) -> None:
        await self._call(lambda: components.kill(name))

    async def stop(self, *names: str) -> None:
        await self._call(lambda: components.stop(*names))

    async def start(self, *names: str, env: Mapping[str, str] | None = None) -> None:
        def start() -> None:
            # The launcher hands os.environ to the services it starts: set for this start
            # only, under the lock, then put back as it was.
            with components.environment(env or {}):
                components.start(*names)

        await self._call(start)

    async def pid(self, name: str) -> int | None:
        return await asyncio.to_thread(components.pid, name)

    async def signal(self, pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            raise NemesisError(f"no process group {pid} to send {sig.name} to") from None

    async def wait_ready(self, names: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting:
            answers = await asyncio.gather(*(asyncio.to_thread(_ready, n) for n in waiting))
            waiting = [n for n, ok in zip(waiting, answers, strict=True) if not ok]
            if waiting and time.monotonic() > deadline:
                raise NemesisError(f"not ready after {timeout:.0f} s: {', '.join(waiting)}")
            if waiting:
                await asyncio.sleep(0.5)

    async def wait_gone(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while await self.pid(name) is not None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def add_toxic(
        self,
        proxy: str,
        name: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        stream: str = "downstream",
    ) -> None:
        await asyncio.to_thread(
            _toxiproxy().add_toxic, proxy, name, kind, attributes, stream=stream
        )

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await asyncio.to_thread(_toxiproxy().remove_toxic, proxy, name)

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        await asyncio.to_thread(_toxiproxy().set_enabled, proxy, enabled)

    async def reset_toxics(self) -> None:
        await asyncio.to_thread(_toxiproxy().reset)

    async def partition_leader(self, topic: str, partition: int) -> str:
        states = await partition_states(ports(), [topic])
        leader = next((s.leader for s in states if s.partition == partition), -1)
        if leader < 0:
            raise NemesisError(f"{topic}[{partition}] has no leader")
        return kafka_node_name(leader)

    async def active_controller(self) -> str:
        node = await asyncio.to_thread(active_controller)
        if node is None:
            raise NemesisError("no running Kafka node knows the active controller")
        return kafka_node_name(node)

    async def wait_in_sync(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = await partition_states(ports())
                lagging = [
                    f"{p.topic}[{p.partition}] isr {list(p.isr)}"
                    for p in states
                    if p.leader < 0 or len(p.isr) < len(p.replicas)
                ]
            except Exception as exc:  # the cluster not answering (yet)
                lagging = [f"{type(exc).__name__}: {exc}"]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise NemesisError(
                    f"not in sync after {timeout:.0f} s: {len(lagging)} partitions, "
                    + ", ".join(lagging[:5])
                )
            await asyncio.sleep(0.5)

    async def duplicate(self, info: RunInfo, count: int, rng: random.Random) -> list[Injected]:
        return await publish_duplicates(_kafka(), info, count, rng)

    async def replay(self, info: RunInfo, count: int) -> list[Injected]:
        return await publish_replay(_kafka(), info, count)

    async def poison(self, poisons: Sequence[Poison]) -> list[Injected]:
        return await publish_poison(_kafka(), poisons)


def _kafka() -> str:
    return ports().bootstrap_servers()


def _ready(service: str) -> bool:
    return http_ok(f"http://{HOST}:{ports().of(service)}/ready")


def _toxiproxy() -> ToxiproxyApi:
    return ToxiproxyApi()


# --- the nemesis -----------------------------------------------------------------------------


# A change to the world and its undoing (a toxic added and removed, a proxy disabled and
# enabled, a process stopped and continued).
Change = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]


@dataclass(frozen=True)
class Step:
    """One action, its random choices drawn: logged as ``action``/``target`` with ``plan``
    as the start entry's detail; ``perform`` does it and returns the end entry's detail."""

    action: str
    target: str
    plan: str
    perform: Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Failpoint:
    service: str
    name: str
    delay: float = 0.0

    @classmethod
    def parse(cls, action: str) -> Failpoint:
        """``failpoint:<service>:<failpoint>[:<delay seconds>]``."""
        parts = action.split(":")
        if parts[0] != "failpoint" or len(parts) not in (3, 4) or parts[1] not in SERVICES:
            raise ValueError(
                f"nemesis action {action!r}: one of {', '.join(ACTIONS)} or "
                f"failpoint:<{'|'.join(SERVICES)}>:<failpoint>[:<delay seconds>]"
            )
        return cls(parts[1], parts[2], float(parts[3]) if len(parts) == 4 else 0.0)


class Nemesis:
    """Seeded chaos (``info.seed``, ``info.actions``) for one run, logged into its folder.

    ``time_scale`` multiplies every wait (the moments between actions and the durations
    within them), so tests run a schedule in milliseconds; the log shows the planned ones.
    ``pair_chance``: how often a step runs a second action alongside the first (a pair).
    """

    def __init__(
        self,
        run: RunDir,
        info: RunInfo,
        actuator: Actuator,
        *,
        mean_interval: float = 10.0,
        first_after: float = 5.0,
        time_scale: float = 1.0,
        pair_chance: float = PAIR_CHANCE,
    ) -> None:
        for action in info.actions:
            if action in NODE_ACTIONS and action not in ACTIONS:
                raise ValueError(
                    f"nemesis action {action!r} needs a Kafka cluster of 3 or more nodes "
                    f"(KAFKA_BROKERS={KAFKA_BROKERS})"
                )
            if action not in ACTIONS:
                Failpoint.parse(action)  # raises ValueError for an unknown action
        if "poison" in info.actions:
            _handled()  # the services' routers, imported now rather than mid-run (~1 s)
        self._run = run
        self._info = info
        self._actuator = actuator
        self._mean_interval = mean_interval
        self._first_after = first_after
        self._scale = time_scale
        self._pair_chance = pair_chance
        self._rng = random.Random(info.seed)
        self._stop = asyncio.Event()
        self._poisoned = 0  # poison keys are numbered over the run
        self._second_instances: set[str] = set()  # the second instances `scale` has running

    async def run(self, stop: asyncio.Event) -> None:
        """Act at random moments until ``stop`` is set; an action in progress then cuts its
        waits short and undoes itself before this returns."""
        self._stop = stop
        delay = self._first_after
        while self._info.actions:
            if await self._wait(delay):
                return
            action = self._rng.choice(self._info.actions)
            partner = self._partner(action)
            if partner is None:
                await self._perform(self._plan(action))
            else:
                await self._pair(action, *partner)
            delay = self._rng.expovariate(1.0 / self._mean_interval)
        await stop.wait()

    async def heal(self) -> None:
        """Undo everything: toxics removed and proxies enabled, stopped processes (Kafka
        nodes too) continued, second instances stopped, every default component started (every
        Kafka node), every replica in sync; returns once the services answer ``/ready``. Tries
        every step; raises NemesisError if any failed."""
        self._log(
            "heal", "all", "start", "toxics and proxies, paused processes, second instances, down"
        )
        failures: list[str] = []

        async def attempt(what: str, operation: Awaitable[None]) -> None:
            try:
                await operation
            except Exception as exc:
                failures.append(f"{what}: {type(exc).__name__}: {exc}")

        await attempt("toxiproxy reset", self._actuator.reset_toxics())
        for name in (*KAFKA_NODES, *SERVICE_PROCESSES):
            await attempt(f"SIGCONT {name}", self._continue(name))
        for second in SECOND_INSTANCES:
            await attempt(f"stop {second}", self._actuator.stop(second))
        self._second_instances.clear()
        await attempt("start", self._actuator.start(*DEFAULT_COMPONENTS))
        await attempt("in sync", self._actuator.wait_in_sync(IN_SYNC_TIMEOUT))
        await attempt("ready", self._actuator.wait_ready(SERVICES, READY_TIMEOUT))
        if failures:
            self._log("heal", "all", "error", "; ".join(failures))
            raise NemesisError("heal left something undone: " + "; ".join(failures))
        self._log("heal", "all", "end", "all components running and ready")

    async def _continue(self, name: str) -> None:
        pid = await self._actuator.pid(name)
        if pid is not None:
            await self._actuator.signal(pid, signal.SIGCONT)

    # -- the moments --

    async def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` (scaled) or until told to stop; True when told to stop."""
        if self._stop.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), max(seconds * self._scale, 0.0))
        except TimeoutError:
            return False
        return True

    def _partner(self, first: str) -> tuple[str, float] | None:
        """Now and then (``pair_chance``) a second action to run alongside ``first``, and how
        long into it: another action of the run, never a second broker fault."""
        if self._rng.random() >= self._pair_chance:
            return None
        others = [a for a in self._info.actions if a != first and not {a, first} <= BROKER_FAULTS]
        if not others:
            return None
        return self._rng.choice(others), self._rng.uniform(0.0, PAIR_LAG)

    async def _pair(self, first: str, second: str, lag: float) -> None:
        """``first`` and ``second`` at once, each logged as usual, within a ``pair`` entry of
        their own. The second is planned ``lag`` s into the first, so it may find what the
        first started (a second instance to isolate)."""
        target = f"{first}+{second}"
        self._log("pair", target, "start", f"{second} begins {lag:.1f} s into {first}")

        async def then() -> str:
            if await self._wait(lag):
                return f"stopped before {second} began"
            await self._perform(self._plan(second))
            return "both ended"

        _, outcome = await asyncio.gather(self._perform(self._plan(first)), then())
        self._log("pair", target, "end", outcome)

    async def _perform(self, step: Step) -> None:
        self._log(step.action, step.target, "start", step.plan)
        log.info("nemesis: %s %s (%s)", step.action, step.target, step.plan)
        try:
            outcome = await step.perform()
        except Exception as exc:
            log.warning("nemesis: %s %s failed: %r", step.action, step.target, exc)
            self._log(step.action, step.target, "error", f"{type(exc).__name__}: {exc}")
            return
        self._log(step.action, step.target, "end", outcome)

    def _log(
        self, action: str, target: str, phase: Literal["start", "end", "error"], detail: str
    ) -> None:
        self._run.append("nemesis.jsonl", NemesisEntry(now(), action, target, phase, detail))

    async def _holding(self, changes: Sequence[Change], seconds: float) -> None:
        """Make each change in turn, hold them ``seconds`` (or until told to stop), then undo
        every change made, even when a later one failed."""
        undo: list[Callable[[], Awaitable[None]]] = []
        try:
            for make, unmake in changes:
                await make()
                undo.append(unmake)
            await self._wait(seconds)
        finally:
            await _all([unmake() for unmake in undo])

    def _held(
        self, action: str, target: str, plan: str, changes: Sequence[Change], seconds: float
    ) -> Step:
        """The step that makes ``changes``, holds them ``seconds`` and undoes them."""

        async def perform() -> str:
            await self._holding(changes, seconds)
            return f"{len(changes)} changes undone"

        return Step(action, target, plan, perform)

    def _toxic(
        self, proxy: str, name: str, kind: str, attributes: dict[str, int | float], stream: str
    ) -> Change:
        return (
            lambda: self._actuator.add_toxic(proxy, name, kind, attributes, stream=stream),
            lambda: self._actuator.remove_toxic(proxy, name),
        )

    def _disabled(self, proxy: str) -> Change:
        return (
            lambda: self._actuator.set_enabled(proxy, False),
            lambda: self._actuator.set_enabled(proxy, True),
        )

    def _stopped(self, pid: int) -> Change:
        return (
            lambda: self._actuator.signal(pid, signal.SIGSTOP),
            lambda: self._actuator.signal(pid, signal.SIGCONT),
        )

    async def _pid(self, name: str) -> int:
        pid = await self._actuator.pid(name)
        if pid is None:
            raise NemesisError(f"{name} is not running")
        return pid

    # -- the actions: each draws its choices now, then returns what performs them --

    def _plan(self, action: str) -> Step:
        planners: dict[str, Callable[[], Step]] = {
            "kill": self._kill,
            "kafka": lambda: self._restart("kafka", KAFKA_NODES),
            "postgres": lambda: self._restart("postgres", ("postgres",)),
            "pause": self._pause,
            "scale": self._scale_out,
            "latency": self._latency,
            "reset": self._reset,
            "isolate": self._isolate,
            "duplicates": self._duplicates,
            "replay": self._replay,
            "poison": self._poison,
            "leader": self._leader,
            "controller": self._controller,
            "broker-pause": self._broker_pause,
            "broker-cut": self._broker_cut,
        }
        planner = planners.get(action)
        return planner() if planner is not None else self._failpoint(Failpoint.parse(action))

    def _kill(self) -> Step:
        service = self._rng.choice(SERVICES)
        down = self._rng.uniform(0.0, 3.0)

        async def perform() -> str:
            await self._actuator.kill(service)
            await self._wait(down)
            await self._actuator.start(service)
            return "started again, ready"

        return Step("kill", service, f"SIGKILL, down {down:.1f} s", perform)

    def _restart(self, action: str, names: Sequence[str]) -> Step:
        """Every one of ``names`` SIGKILLed one after the other, or stopped together (a
        Kafka node stopped alone hands its partitions over to the others, and the last one
        waits for a quorum that has gone), then all started; the services ready again."""
        how = self._rng.choice(("SIGKILL", "stop"))

        async def perform() -> str:
            began = time.monotonic()
            if how == "stop":
                await self._actuator.stop(*names)
            for name in names if how == "SIGKILL" else ():
                await self._actuator.kill(name)
            await self._actuator.start(*names)
            await self._actuator.wait_ready(SERVICES, READY_TIMEOUT)
            return f"started again; services ready after {time.monotonic() - began:.1f} s"

        every = f" every node ({', '.join(names)})" if len(names) > 1 else ""
        return Step(action, action, f"{how}{every}, then start", perform)

    def _pause(self) -> Step:
        service = self._rng.choice(SERVICES)

        async def perform() -> str:
            pid = await self._pid(service)
            await self._holding([self._stopped(pid)], PAUSE_SECONDS)
            await self._actuator.wait_ready([service], READY_TIMEOUT)
            return f"SIGCONT pid {pid}, ready"

        plan = (
            f"SIGSTOP for {PAUSE_SECONDS:.0f} s (session timeout {SESSION_TIMEOUT_SECONDS:.0f} s)"
        )
        return Step("pause", service, plan, perform)

    def _scale_out(self) -> Step:
        second = f"{self._rng.choice(SERVICES)}-2"
        hold = self._rng.uniform(15.0, 30.0)

        async def perform() -> str:
            try:  # a start that failed half-way may have left a process: stopped too
                await self._actuator.start(second)
                self._second_instances.add(second)
                await self._wait(hold)
            finally:
                self._second_instances.discard(second)
                await self._actuator.stop(second)
            return "stopped again"

        return Step("scale", second, f"second instance for {hold:.1f} s", perform)

    def _latency(self) -> Step:
        group = self._rng.choice(list(PROXY_GROUPS))
        latency = self._rng.randint(100, 300)
        jitter = latency // 4
        hold = self._rng.uniform(5.0, 15.0)
        attributes: dict[str, int | float] = {"latency": latency, "jitter": jitter}
        toxics = [
            self._toxic(proxy, f"nemesis-latency-{stream}", "latency", attributes, stream)
            for proxy in proxies(PROXY_GROUPS[group])
            for stream in ("downstream", "upstream")
        ]
        plan = f"latency {latency}±{jitter} ms both ways for {hold:.1f} s, every lane"
        return self._held("latency", group, plan, toxics, hold)

    def _reset(self) -> Step:
        group = self._rng.choice(list(PROXY_GROUPS))
        names = proxies(PROXY_GROUPS[group])
        if self._rng.random() < 0.5:
            hold = self._rng.uniform(1.0, 3.0)
            changes = [
                self._toxic(proxy, "nemesis-reset", "reset_peer", {"timeout": 0}, "downstream")
                for proxy in names
            ]
            plan = f"reset_peer for {hold:.1f} s, every lane"
        else:
            hold = self._rng.uniform(2.0, 5.0)
            changes = [self._disabled(proxy) for proxy in names]
            plan = f"proxies disabled for {hold:.1f} s, every lane"
        return self._held("reset", group, plan, changes, hold)

    def _isolate(self) -> Step:
        running = [*SERVICES, *sorted(self._second_instances)]
        # One draw whatever the count: a second instance running must not shift the schedule.
        lane = running[int(self._rng.random() * len(running))]
        targets = (*KAFKA_NODES, POSTGRES_PROXY) if self._rng.random() < 0.5 else KAFKA_NODES
        hold = self._rng.uniform(5.0, 15.0)
        changes = [self._disabled(proxy) for proxy in proxies(targets, [lane])]
        what = "Kafka and PostgreSQL" if POSTGRES_PROXY in targets else "Kafka"
        plan = f"its {what} proxies disabled for {hold:.1f} s"
        return self._held("isolate", lane, plan, changes, hold)

    # -- one Kafka node at a time (BROKER_FAULTS) --

    def _leader(self) -> Step:
        topic = self._rng.choice(TOPICS)
        partition = self._rng.randrange(topic_partitions())
        down = self._rng.uniform(3.0, 10.0)

        async def perform() -> str:
            node = await self._actuator.partition_leader(topic, partition)
            return await self._node_down(node, down)

        plan = f"SIGKILL its leader, down {down:.1f} s"
        return Step("leader", f"{topic}[{partition}]", plan, perform)

    def _controller(self) -> Step:
        down = self._rng.uniform(3.0, 10.0)

        async def perform() -> str:
            return await self._node_down(await self._actuator.active_controller(), down)

        return Step(
            "controller", "quorum", f"SIGKILL the active controller, down {down:.1f} s", perform
        )

    async def _node_down(self, node: str, down: float) -> str:
        """SIGKILL Kafka node ``node``, wait ``down`` s, start it (back when in sync)."""
        began = time.monotonic()
        try:
            await self._actuator.kill(node)
            await self._wait(down)
            await self._actuator.start(node)
            await self._actuator.wait_ready(SERVICES, READY_TIMEOUT)
        except Exception as exc:  # the entry names the node the fault hit
            raise NemesisError(f"{node}: {type(exc).__name__}: {exc}") from exc
        return (
            f"{node} SIGKILLed, back in sync; services ready after {time.monotonic() - began:.1f} s"
        )

    def _broker_pause(self) -> Step:
        node = self._rng.choice(KAFKA_NODES)
        hold = self._rng.uniform(8.0, 15.0)

        async def perform() -> str:
            pid = await self._pid(node)
            await self._holding([self._stopped(pid)], hold)
            await self._actuator.wait_in_sync(IN_SYNC_TIMEOUT)
            return f"SIGCONT pid {pid}, every replica in sync"

        plan = (
            f"SIGSTOP for {hold:.1f} s "
            f"(broker session timeout {BROKER_SESSION_TIMEOUT_SECONDS:.0f} s)"
        )
        return Step("broker-pause", node, plan, perform)

    def _broker_cut(self) -> Step:
        node = self._rng.choice(KAFKA_NODES)
        hold = self._rng.uniform(5.0, 15.0)
        changes = [self._disabled(proxy) for proxy in proxies([node])]
        plan = f"its proxies disabled for {hold:.1f} s, every lane"
        return self._held("broker-cut", node, plan, changes, hold)

    def _duplicates(self) -> Step:
        count = self._rng.randint(5, 30)
        # A stream of its own: how many draws the reading takes depends on what is on the
        # topics, and must not shift the rest of the schedule.
        rng = random.Random(self._rng.getrandbits(64))

        async def perform() -> str:
            injected = await self._actuator.duplicate(self._info, count, rng)
            for record in injected:
                self._run.append("injected.jsonl", record)
            return f"{len(injected)} re-published"

        return Step("duplicates", "topics", f"up to {count} records of the run", perform)

    def _replay(self) -> Step:
        count = self._rng.randint(10, 30)

        async def perform() -> str:
            injected = await self._actuator.replay(self._info, count)
            for record in injected:
                self._run.append("injected.jsonl", record)
            return f"{len(injected)} re-published"

        return Step("replay", "topics", f"the first {count} records of each partition", perform)

    def _poison(self) -> Step:
        poisons = []
        for _ in range(self._rng.randint(1, 3)):
            self._poisoned += 1
            key = f"{self._info.poison_prefix}{self._poisoned}"
            topic = self._rng.choice(TOPICS)
            kind = self._rng.choice(POISON_KINDS)
            event_type = (
                self._rng.choice(handled_types(topic)) if kind == "unknown_version" else None
            )
            poisons.append(Poison(key, topic, kind, event_type))

        async def perform() -> str:
            injected = await self._actuator.poison(poisons)
            for record in injected:
                self._run.append("injected.jsonl", record)
            return ", ".join(f"{r.key}@{r.topic}[{r.partition}]:{r.offset}" for r in injected)

        plan = ", ".join(
            f"{p.key} {p.kind}{f' {p.event_type}' if p.event_type else ''} on {p.topic}"
            for p in poisons
        )
        return Step("poison", "topics", plan, perform)

    def _failpoint(self, failpoint: Failpoint) -> Step:
        service = failpoint.service
        env = {"FAILPOINTS": failpoint.name, "FAILPOINT_DELAY_SECONDS": str(failpoint.delay)}

        async def perform() -> str:
            await self._actuator.stop(service)
            try:
                await self._actuator.start(service, env=env)
            except Exception as exc:  # died before it was ready: the failpoint was passed
                log.info(
                    "nemesis: %s armed with %s did not get ready: %r", service, failpoint.name, exc
                )
            died = await self._actuator.wait_gone(service, FAILPOINT_TIMEOUT)
            if not died:
                await self._actuator.stop(service)
            await self._actuator.start(service)
            if not died:
                raise NemesisError(
                    f"{failpoint.name} never killed {service} within {FAILPOINT_TIMEOUT:.0f} s;"
                    " stopped and started it without"
                )
            return "died at the failpoint; started again without it, ready"

        plan = f"armed with {failpoint.name} (delay {failpoint.delay:g} s)"
        return Step("failpoint", service, plan, perform)


async def _all(operations: Sequence[Awaitable[None]]) -> None:
    """Await every undo even if one fails; then raise the first failure."""
    failures = []
    for operation in operations:
        try:
            await operation
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
