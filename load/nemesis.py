"""The chaos nemesis: during a load run, at seeded random moments, one fault at a time.

The actions (``RunInfo.actions`` names which ones a run allows):

- ``kill``: SIGKILL one service process (order, inventory or shipping), 0-3 s down, start it.
- ``kafka``: restart the Kafka broker (SIGKILL or graceful stop), wait until the services are ready.
- ``postgres``: restart PostgreSQL (SIGKILL or graceful stop), wait until the services are ready.
- ``pause``: SIGSTOP one service past its consumer session timeout (its group rebalances), SIGCONT.
- ``scale``: run a second instance of one service for 15-30 s (partitions move there and back).
- ``latency``: 100-300 ms latency (with jitter) both ways on the PostgreSQL or Kafka proxy, 5-15 s.
- ``reset``: connections reset (1-3 s) or the proxy disabled (2-5 s), PostgreSQL's or Kafka's.
- ``duplicates``: re-publish 5-30 records of the run, byte for byte, to their own partitions.
- ``replay``: re-publish the run's first 10-30 records of every partition, in their order: an
  early stretch of the log delivered again, as after a consumer group's offsets were reset.
  Old events arrive after newer ones of their aggregates (stale levels of a stock, say).
- ``poison``: publish 1-3 poison records (not JSON, not an envelope, an unknown schema version).
- ``failpoint:<service>:<failpoint>[:<delay>]``: restart the service with that failpoint armed,
  wait until it kills the process, start it again without (the pitfall runs use these).

Every action is written to ``nemesis.jsonl`` as a ``start`` and an ``end`` (or ``error``)
entry; what was published goes to ``injected.jsonl``, with where it landed and, for poison,
the services that must dead-letter it. An action that fails is logged and the nemesis goes
on; an action in progress when the nemesis is told to stop cuts its wait short and undoes
itself. :meth:`Nemesis.heal` undoes whatever is left, whatever state the run is in.

The nemesis runs in the runner's event loop; everything it does to the world goes through an
:class:`Actuator` (:class:`LiveActuator` for real, a recording fake in the tests).
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
from infra.settings import HOST, ports
from infra.toxiproxy import ToxiproxyApi
from load.runinfo import Injected, NemesisEntry, RunDir, RunInfo, now
from shared.contracts import current_events
from shared.envelope import Envelope, MalformedEnvelopeError, parse_envelope
from shared.routing import Router

log = logging.getLogger(__name__)

ACTIONS: tuple[str, ...] = (
    "kill",
    "kafka",
    "postgres",
    "pause",
    "scale",
    "latency",
    "reset",
    "duplicates",
    "replay",
    "poison",
)
SERVICES: tuple[str, ...] = ("order", "inventory", "shipping")
# The launcher's default set: what a healed run has running (not toxiproxy, not second
# instances; toxiproxy is the runner's and stays up).
DEFAULT_COMPONENTS: tuple[str, ...] = ("postgres", "kafka", "jaeger", *SERVICES)
TOPICS: tuple[str, ...] = ("orders", "inventory", "shipping", "stock")
PROXIES: tuple[str, ...] = ("postgres", "kafka")

# shared.kafka.new_consumer's session_timeout_ms (not a setting; a test keeps them equal): a
# consumer silent this long is expelled from its group.
SESSION_TIMEOUT_SECONDS = 10.0
PAUSE_SECONDS = SESSION_TIMEOUT_SECONDS + 5.0
READY_TIMEOUT = 120.0  # services back after a broker or database restart
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
    from inventory.handlers import router as inventory  # noqa: PLC0415
    from order.handlers import router as order  # noqa: PLC0415
    from shipping.handlers import router as shipping  # noqa: PLC0415

    routers: dict[str, Router[Any]] = {
        "order": order,
        "inventory": inventory,
        "shipping": shipping,
    }
    types = [spec.event_type for spec in current_events()]
    return {
        service: frozenset(t for t in types if router.handler_for(t) is not None)
        for service, router in routers.items()
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
      and ``ConsumerRunner._apply`` dead-letters the record at once, in every service that
      consumes the topic, whatever it handles;
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


class Actuator(Protocol):
    """What the nemesis does to the world. Component names are the launcher's ("order",
    "order-2", "kafka", ...); proxies are Toxiproxy's ("postgres", "kafka")."""

    async def kill(self, name: str) -> None:
        """SIGKILL the component (and its process group)."""

    async def stop(self, name: str) -> None:
        """Stop the component gracefully (SIGKILL after its timeout); idempotent."""

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

    async def stop(self, name: str) -> None:
        await self._call(lambda: components.stop(name))

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

    async def duplicate(self, info: RunInfo, count: int, rng: random.Random) -> list[Injected]:
        return await publish_duplicates(_kafka(), info, count, rng)

    async def replay(self, info: RunInfo, count: int) -> list[Injected]:
        return await publish_replay(_kafka(), info, count)

    async def poison(self, poisons: Sequence[Poison]) -> list[Injected]:
        return await publish_poison(_kafka(), poisons)


def _kafka() -> str:
    return f"{HOST}:{ports().kafka}"


def _ready(service: str) -> bool:
    return http_ok(f"http://{HOST}:{ports().of(service)}/ready")


def _toxiproxy() -> ToxiproxyApi:
    return ToxiproxyApi()


# --- the nemesis -----------------------------------------------------------------------------


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
    ) -> None:
        for action in info.actions:
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
        self._rng = random.Random(info.seed)
        self._stop = asyncio.Event()
        self._poisoned = 0  # poison keys are numbered over the run

    async def run(self, stop: asyncio.Event) -> None:
        """Act at random moments until ``stop`` is set; an action in progress then cuts its
        waits short and undoes itself before this returns."""
        self._stop = stop
        delay = self._first_after
        while self._info.actions:
            if await self._wait(delay):
                return
            step = self._plan(self._rng.choice(self._info.actions))
            await self._perform(step)
            delay = self._rng.expovariate(1.0 / self._mean_interval)
        await stop.wait()

    async def heal(self) -> None:
        """Undo everything: toxics removed and proxies enabled, stopped processes continued,
        second instances stopped, every default component started; returns once the services
        answer ``/ready``. Tries every step; raises NemesisError if any failed."""
        self._log("heal", "all", "start", "toxics, paused processes, second instances, down")
        failures: list[str] = []

        async def attempt(what: str, operation: Awaitable[None]) -> None:
            try:
                await operation
            except Exception as exc:
                failures.append(f"{what}: {type(exc).__name__}: {exc}")

        await attempt("toxiproxy reset", self._actuator.reset_toxics())
        for name in (*SERVICES, *(f"{s}-2" for s in SERVICES)):
            await attempt(f"SIGCONT {name}", self._continue(name))
        for service in SERVICES:
            await attempt(f"stop {service}-2", self._actuator.stop(f"{service}-2"))
        await attempt("start", self._actuator.start(*DEFAULT_COMPONENTS))
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

    # -- the actions: each draws its choices now, then returns what performs them --

    def _plan(self, action: str) -> Step:
        planners: dict[str, Callable[[], Step]] = {
            "kill": self._kill,
            "kafka": lambda: self._restart("kafka"),
            "postgres": lambda: self._restart("postgres"),
            "pause": self._pause,
            "scale": self._scale_out,
            "latency": self._latency,
            "reset": self._reset,
            "duplicates": self._duplicates,
            "replay": self._replay,
            "poison": self._poison,
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

    def _restart(self, name: str) -> Step:
        how = self._rng.choice(("SIGKILL", "stop"))

        async def perform() -> str:
            began = time.monotonic()
            if how == "SIGKILL":
                await self._actuator.kill(name)
            else:
                await self._actuator.stop(name)
            await self._actuator.start(name)
            await self._actuator.wait_ready(SERVICES, READY_TIMEOUT)
            return f"started again; services ready after {time.monotonic() - began:.1f} s"

        return Step(name, name, f"{how}, then start", perform)

    def _pause(self) -> Step:
        service = self._rng.choice(SERVICES)

        async def perform() -> str:
            pid = await self._actuator.pid(service)
            if pid is None:
                raise NemesisError(f"{service} is not running")
            await self._actuator.signal(pid, signal.SIGSTOP)
            try:
                await self._wait(PAUSE_SECONDS)
            finally:
                await self._actuator.signal(pid, signal.SIGCONT)
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
                await self._wait(hold)
            finally:
                await self._actuator.stop(second)
            return "stopped again"

        return Step("scale", second, f"second instance for {hold:.1f} s", perform)

    def _latency(self) -> Step:
        proxy = self._rng.choice(PROXIES)
        latency = self._rng.randint(100, 300)
        jitter = latency // 4
        hold = self._rng.uniform(5.0, 15.0)
        toxics = {f"nemesis-latency-{stream}": stream for stream in ("downstream", "upstream")}

        async def perform() -> str:
            added = []
            try:
                for name, stream in toxics.items():
                    attributes: dict[str, int | float] = {"latency": latency, "jitter": jitter}
                    await self._actuator.add_toxic(
                        proxy, name, "latency", attributes, stream=stream
                    )
                    added.append(name)
                await self._wait(hold)
            finally:
                await _all([self._actuator.remove_toxic(proxy, name) for name in added])
            return "toxics removed"

        plan = f"latency {latency}±{jitter} ms both ways for {hold:.1f} s"
        return Step("latency", proxy, plan, perform)

    def _reset(self) -> Step:
        proxy = self._rng.choice(PROXIES)
        if self._rng.random() < 0.5:
            hold = self._rng.uniform(1.0, 3.0)

            async def reset_peer() -> str:
                await self._actuator.add_toxic(proxy, "nemesis-reset", "reset_peer", {"timeout": 0})
                try:
                    await self._wait(hold)
                finally:
                    await self._actuator.remove_toxic(proxy, "nemesis-reset")
                return "toxic removed"

            return Step("reset", proxy, f"reset_peer for {hold:.1f} s", reset_peer)
        hold = self._rng.uniform(2.0, 5.0)

        async def disable() -> str:
            await self._actuator.set_enabled(proxy, False)
            try:
                await self._wait(hold)
            finally:
                await self._actuator.set_enabled(proxy, True)
            return "enabled again"

        return Step("reset", proxy, f"proxy disabled for {hold:.1f} s", disable)

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
