"""The nemesis: its seeded schedule and its log against a recording actuator; what each poison
kind does in the real consumer code; duplicates and poison published to a real Kafka topic of
the test's own. No process of the shared servers is touched."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra import components
from inventory.handlers import router as inventory_router
from load.nemesis import (
    ACTIONS,
    DEFAULT_COMPONENTS,
    PAUSE_SECONDS,
    POISON_KINDS,
    SESSION_TIMEOUT_SECONDS,
    TOPICS,
    LiveActuator,
    Nemesis,
    NemesisError,
    Poison,
    handled_types,
    publish_duplicates,
    publish_poison,
    publish_replay,
    subscribers,
)
from load.runinfo import Injected, NemesisEntry, RunDir, RunInfo, now
from order.handlers import router as order_router
from shared.envelope import Envelope, MalformedEnvelopeError, parse_envelope
from shared.kafka import new_consumer
from shared.processing import EventProcessor, PermanentError
from shared.routing import Router
from shared.settings import ServiceSettings
from shared.testing.infra import create_topics, kafka_bootstrap, unique
from shipping.handlers import router as shipping_router

ROUTERS: dict[str, Router[Any]] = {
    "order": order_router,
    "inventory": inventory_router,
    "shipping": shipping_router,
}


def run_info(actions: Sequence[str], seed: int = 7, **overrides: Any) -> RunInfo:
    values: dict[str, Any] = {
        "run_id": "test",
        "tag": "t1",
        "seed": seed,
        "users": 1,
        "rate": 1.0,
        "duration": 1.0,
        "nemesis": True,
        "actions": list(actions),
        "pitfalls": {},
        "hot_skus": ["Lt1-HOT-1"],
        "skus": ["Lt1-SKU-1"],
        "start_offsets": {},
        "started_at": now(),
    }
    return RunInfo(**(values | overrides))


@dataclass
class RecordingActuator:
    """Records every call as (operation, arguments); ``failing`` operations raise."""

    failing: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    gone: bool = True  # what wait_gone answers

    def _record(self, operation: str, *args: Any) -> None:
        self.calls.append((operation, args))
        if operation in self.failing:
            raise RuntimeError(f"{operation} failed (on purpose)")

    def ops(self) -> list[str]:
        return [operation for operation, _ in self.calls]

    async def kill(self, name: str) -> None:
        self._record("kill", name)

    async def stop(self, name: str) -> None:
        self._record("stop", name)

    async def start(self, *names: str, env: Mapping[str, str] | None = None) -> None:
        self._record("start", names, dict(env or {}))

    async def pid(self, name: str) -> int | None:
        self._record("pid", name)
        return None if name.endswith("-2") else 4000 + len(name)

    async def signal(self, pid: int, sig: signal.Signals) -> None:
        self._record("signal", pid, sig)

    async def wait_ready(self, names: Sequence[str], timeout: float) -> None:
        self._record("wait_ready", tuple(names))

    async def wait_gone(self, name: str, timeout: float) -> bool:
        self._record("wait_gone", name)
        return self.gone

    async def add_toxic(
        self,
        proxy: str,
        name: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        stream: str = "downstream",
    ) -> None:
        self._record("add_toxic", proxy, name, kind, attributes, stream)

    async def remove_toxic(self, proxy: str, name: str) -> None:
        self._record("remove_toxic", proxy, name)

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        self._record("set_enabled", proxy, enabled)

    async def reset_toxics(self) -> None:
        self._record("reset_toxics")

    async def duplicate(self, info: RunInfo, count: int, rng: random.Random) -> list[Injected]:
        self._record("duplicate", count)
        return [
            Injected(now(), "duplicate", "orders", 0, n, f"k{n}", event_id=str(uuid4()))
            for n in range(count)
        ]

    async def replay(self, info: RunInfo, count: int) -> list[Injected]:
        self._record("replay", count)
        return [
            Injected(now(), "duplicate", "stock", 0, n, f"k{n}", event_id=str(uuid4()))
            for n in range(count)
        ]

    async def poison(self, poisons: Sequence[Poison]) -> list[Injected]:
        self._record("poison", tuple(poisons))
        return [
            Injected(now(), "poison", p.topic, 0, n, p.key, expect_letters=p.expect_letters())
            for n, p in enumerate(poisons)
        ]


async def run_until(nemesis: Nemesis, run: RunDir, starts: int, timeout: float = 20.0) -> None:
    """Run ``nemesis`` until ``starts`` actions have begun, then stop it and wait."""
    stop = asyncio.Event()
    task = asyncio.create_task(nemesis.run(stop))
    deadline = time.monotonic() + timeout
    while sum(e.phase == "start" for e in run.nemesis()) < starts:
        assert not task.done(), "the nemesis returned before it was stopped"
        assert time.monotonic() < deadline, "the nemesis did not act in time"
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 5.0)


def fast(run: RunDir, info: RunInfo, actuator: RecordingActuator) -> Nemesis:
    return Nemesis(run, info, actuator, mean_interval=1.0, first_after=0.0, time_scale=0.0)


def choices(run: RunDir, count: int) -> list[tuple[str, str, str]]:
    return [(e.action, e.target, e.detail) for e in run.nemesis() if e.phase == "start"][:count]


# --- the schedule ----------------------------------------------------------------------------


async def test_the_same_seed_gives_the_same_actions_targets_and_choices(tmp_path: Path) -> None:
    runs = [RunDir(tmp_path / name) for name in ("a", "b", "c")]
    for run, seed in zip(runs, (11, 11, 12), strict=True):
        run.path.mkdir()
        await run_until(fast(run, run_info(ACTIONS, seed=seed), RecordingActuator()), run, 25)

    first, again, other = (choices(run, 25) for run in runs)
    assert first == again
    assert first != other
    assert len({action for action, _, _ in first}) > 4  # a mix, not one action over and over


class TimedNemesis(Nemesis):
    """Notes every wait it plans: the moments between actions and the holds within them."""

    waits: list[float]

    async def _wait(self, seconds: float) -> bool:
        self.waits = [*getattr(self, "waits", []), seconds]
        return await super()._wait(seconds)


async def test_the_moments_follow_the_seed_too(tmp_path: Path) -> None:
    async def waits(name: str, seed: int) -> list[float]:
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        info = run_info(["kill", "scale", "poison"], seed=seed)
        nemesis = TimedNemesis(run, info, RecordingActuator(), time_scale=0.0)
        await run_until(nemesis, run, 15)
        return nemesis.waits[:20]

    first, again, other = await waits("a", 5), await waits("b", 5), await waits("c", 6)
    assert first == again
    assert first != other
    assert first[0] == 5.0  # first_after
    assert len(set(first)) > 10  # drawn, not a fixed period


async def test_only_the_run_s_actions_are_used(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["pause", "latency"]), actuator), run, 20)

    assert {e.action for e in run.nemesis()} == {"pause", "latency"}
    assert set(actuator.ops()) <= {"pid", "signal", "wait_ready", "add_toxic", "remove_toxic"}


async def test_an_unknown_action_is_refused_up_front(tmp_path: Path) -> None:
    for action in ("explode", "failpoint:order", "failpoint:billing:uow.after_commit"):
        with pytest.raises(ValueError, match="nemesis action"):
            Nemesis(RunDir(tmp_path), run_info([action]), RecordingActuator())


async def test_stop_ends_the_run_promptly_and_the_action_in_progress_undoes_itself(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    nemesis = Nemesis(run, run_info(["scale"]), actuator, first_after=0.0)  # real time
    stop = asyncio.Event()
    task = asyncio.create_task(nemesis.run(stop))
    while not run.nemesis():
        await asyncio.sleep(0.01)
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2.0)

    assert time.monotonic() - began < 1.0  # the second instance was to run 15-30 s
    (start, end) = run.nemesis()
    assert (start.action, start.phase, end.phase) == ("scale", "start", "end")
    second = start.target
    assert actuator.calls == [("start", ((second,), {})), ("stop", (second,))]


async def test_an_idle_nemesis_waits_for_stop(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(Nemesis(run, run_info([]), RecordingActuator()).run(stop))
    await asyncio.sleep(0.05)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert run.nemesis() == []


# --- the log ---------------------------------------------------------------------------------


async def test_every_action_is_logged_as_a_start_and_an_end_with_its_moments(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    began = now()
    await run_until(fast(run, run_info(ACTIONS, seed=5), RecordingActuator()), run, 40)

    entries: list[NemesisEntry] = run.nemesis()
    assert len(entries) % 2 == 0
    for start, end in zip(entries[::2], entries[1::2], strict=True):
        assert (start.phase, end.phase) == ("start", "end"), (start, end)
        assert (start.action, start.target) == (end.action, end.target)
        assert start.detail
        assert began <= start.t <= end.t <= now()
    assert {e.action for e in entries} == set(ACTIONS)


async def test_a_failing_action_is_logged_as_an_error_and_the_nemesis_goes_on(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(failing={"kill"})
    await run_until(fast(run, run_info(["kill", "poison"], seed=2), actuator), run, 12)

    entries = run.nemesis()
    errors = [e for e in entries if e.phase == "error"]
    assert errors
    assert all(e.action == "kill" and "kill failed (on purpose)" in e.detail for e in errors)
    after_first_error = entries[entries.index(errors[0]) + 1 :]
    assert any(e.phase == "end" for e in after_first_error)
    assert "start" not in actuator.ops()  # a service that could not be killed is left alone


async def test_kill_restarts_the_same_service(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["kill"]), actuator), run, 3)

    for n in range(3):
        killed, started = actuator.calls[2 * n], actuator.calls[2 * n + 1]
        assert killed[0] == "kill"
        assert killed[1][0] in {"order", "inventory", "shipping"}
        assert started == ("start", ((killed[1][0],), {}))


async def test_a_broker_or_database_restart_waits_for_the_services(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["kafka", "postgres"], seed=4), actuator), run, 8)

    restarts = [c for c in actuator.calls if c[0] in {"kill", "stop"}]
    assert {c[0] for c in restarts} == {"kill", "stop"}  # SIGKILL and graceful, seeded
    for n, (how, (name,)) in enumerate(restarts):
        assert name in {"kafka", "postgres"}
        assert actuator.calls[3 * n : 3 * n + 3] == [
            (how, (name,)),
            ("start", ((name,), {})),
            ("wait_ready", (("order", "inventory", "shipping"),)),
        ]


async def test_pause_stops_a_service_past_its_session_timeout_then_continues_it(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["pause"]), actuator), run, 1)

    (_, (service,)), stopped, continued, ready = actuator.calls[:4]
    pid = 4000 + len(service)
    assert stopped == ("signal", (pid, signal.SIGSTOP))
    assert continued == ("signal", (pid, signal.SIGCONT))
    assert ready == ("wait_ready", ((service,),))
    assert PAUSE_SECONDS > SESSION_TIMEOUT_SECONDS


async def test_the_session_timeout_is_the_one_the_services_consumers_use() -> None:
    settings = ServiceSettings(
        service_name="nemesis",
        http_port=1,
        database_url="postgresql://127.0.0.1/none",
        admin_token="a-token-for-this-test",
    )
    consumer = new_consumer(settings)  # never started: only its configuration is read
    try:
        assert consumer._session_timeout_ms == SESSION_TIMEOUT_SECONDS * 1000
    finally:
        await consumer.stop()


async def test_a_second_instance_that_failed_to_start_is_stopped(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(failing={"start"})
    await run_until(fast(run, run_info(["scale"]), actuator), run, 1)

    assert actuator.ops()[:2] == ["start", "stop"]
    assert run.nemesis()[1].phase == "error"


async def test_latency_and_reset_toxics_are_removed_again(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["latency", "reset"], seed=9), actuator), run, 20)

    added = {(c[1][0], c[1][1]) for c in actuator.calls if c[0] == "add_toxic"}
    removed = {(c[1][0], c[1][1]) for c in actuator.calls if c[0] == "remove_toxic"}
    assert added == removed
    assert {name for _, name in added} == {
        "nemesis-latency-downstream",
        "nemesis-latency-upstream",
        "nemesis-reset",
    }
    latencies = [c[1][3] for c in actuator.calls if c[0] == "add_toxic" and c[1][2] == "latency"]
    assert all(100 <= a["latency"] <= 300 and a["jitter"] > 0 for a in latencies)
    toggles = [c[1] for c in actuator.calls if c[0] == "set_enabled"]
    assert toggles  # the other kind of reset: the proxy disabled, then enabled
    assert toggles[::2] == [(proxy, False) for proxy, _ in toggles[::2]]
    assert toggles[1::2] == [(proxy, True) for proxy, _ in toggles[::2]]


async def test_a_toxic_is_removed_even_when_the_run_fails_while_it_is_on(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(failing={"remove_toxic"})
    await run_until(fast(run, run_info(["latency"]), actuator), run, 1)

    assert actuator.ops()[:4] == ["add_toxic", "add_toxic", "remove_toxic", "remove_toxic"]
    assert run.nemesis()[-1].phase == "error"


async def test_duplicates_and_poison_are_written_to_injected(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["duplicates", "poison"], seed=1), actuator), run, 10)

    counts = [c[1][0] for c in actuator.calls if c[0] == "duplicate"]
    poisons = [p for c in actuator.calls if c[0] == "poison" for p in c[1][0]]
    assert all(5 <= count <= 30 for count in counts)
    injected = run.injected()
    assert sum(i.kind == "duplicate" for i in injected) == sum(counts)
    assert [i.key for i in injected if i.kind == "poison"] == [
        f"poison-t1-{n}" for n in range(1, len(poisons) + 1)
    ]
    assert {p.topic for p in poisons} <= set(TOPICS)


async def test_a_replay_is_written_to_injected(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["replay"], seed=2), actuator), run, 3)

    counts = [c[1][0] for c in actuator.calls if c[0] == "replay"]
    assert counts
    assert all(10 <= count <= 30 for count in counts)
    assert sum(i.kind == "duplicate" for i in run.injected()) == sum(counts)


async def test_a_failpoint_restarts_the_service_armed_then_without(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    action = "failpoint:inventory:consumer.after_db_commit:0.5"
    await run_until(fast(run, run_info([action]), actuator), run, 1)

    armed = {"FAILPOINTS": "consumer.after_db_commit", "FAILPOINT_DELAY_SECONDS": "0.5"}
    assert actuator.calls[:4] == [
        ("stop", ("inventory",)),
        ("start", (("inventory",), armed)),
        ("wait_gone", ("inventory",)),
        ("start", (("inventory",), {})),
    ]
    start, end = run.nemesis()[:2]
    assert (start.action, start.target, end.phase) == ("failpoint", "inventory", "end")


async def test_a_failpoint_never_passed_is_an_error_and_the_service_runs_without(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(gone=False)
    await run_until(fast(run, run_info(["failpoint:order:uow.after_commit"]), actuator), run, 1)

    assert actuator.calls[2:5] == [
        ("wait_gone", ("order",)),
        ("stop", ("order",)),
        ("start", (("order",), {})),
    ]
    assert run.nemesis()[1].phase == "error"
    assert "never killed order" in run.nemesis()[1].detail


# --- heal ------------------------------------------------------------------------------------


async def test_heal_undoes_everything_and_is_logged(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await Nemesis(run, run_info(ACTIONS), actuator).heal()

    assert actuator.calls[0] == ("reset_toxics", ())
    continued = [c[1][0] for c in actuator.calls if c[0] == "signal"]
    assert continued == [4000 + len(s) for s in ("order", "inventory", "shipping")]
    assert all(c[1][1] == signal.SIGCONT for c in actuator.calls if c[0] == "signal")
    assert [c[1] for c in actuator.calls if c[0] == "stop"] == [
        ("order-2",),
        ("inventory-2",),
        ("shipping-2",),
    ]
    assert ("start", (DEFAULT_COMPONENTS, {})) in actuator.calls
    assert actuator.calls[-1] == ("wait_ready", (("order", "inventory", "shipping"),))
    assert [(e.action, e.phase) for e in run.nemesis()] == [("heal", "start"), ("heal", "end")]


async def test_heal_tries_every_step_and_reports_what_failed(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(failing={"reset_toxics", "stop"})
    with pytest.raises(NemesisError, match="toxiproxy reset"):
        await Nemesis(run, run_info(ACTIONS), actuator).heal()

    assert ("start", (DEFAULT_COMPONENTS, {})) in actuator.calls
    assert actuator.ops()[-1] == "wait_ready"
    entry = run.nemesis()[-1]
    assert (entry.action, entry.phase) == ("heal", "error")
    assert "stop shipping-2" in entry.detail


# --- the live actuator's environment ---------------------------------------------------------


async def test_an_armed_start_sets_the_environment_for_that_start_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, str | None]] = []

    def start(*names: str) -> None:
        seen.append({n: os.environ.get(n) for n in ("FAILPOINTS", "PITFALL_NO_DEDUP")})

    monkeypatch.setattr(components, "start", start)
    monkeypatch.setenv("PITFALL_NO_DEDUP", "true")
    monkeypatch.delenv("FAILPOINTS", raising=False)
    actuator = LiveActuator()
    await actuator.start("order", env={"FAILPOINTS": "uow.after_commit"})
    await actuator.start("order")

    assert seen == [
        {"FAILPOINTS": "uow.after_commit", "PITFALL_NO_DEDUP": "true"},
        {"FAILPOINTS": None, "PITFALL_NO_DEDUP": "true"},
    ]
    assert os.environ["PITFALL_NO_DEDUP"] == "true"


# --- poison, against the consumers' own code -------------------------------------------------


def test_the_subscribers_are_the_routers_topics() -> None:
    for topic in TOPICS:
        assert subscribers(topic) == [s for s, r in ROUTERS.items() if topic in r.topics]
    assert subscribers("orders") == ["inventory", "shipping"]
    assert subscribers("shipping") == ["order", "inventory"]


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("kind", ["not_json", "not_envelope"])
def test_a_record_that_is_no_envelope_is_dead_lettered_by_every_consumer_of_its_topic(
    topic: str, kind: Any
) -> None:
    poison = Poison("poison-t1-1", topic, kind)
    with pytest.raises(MalformedEnvelopeError):  # ConsumerRunner._apply dead-letters these
        parse_envelope(poison.value())
    assert poison.expect_letters() == subscribers(topic)
    assert poison.expect_letters()


@pytest.mark.parametrize("topic", TOPICS)
def test_an_unknown_version_is_dead_lettered_only_where_its_type_is_handled(topic: str) -> None:
    for event_type in handled_types(topic):
        poison = Poison("poison-t1-1", topic, "unknown_version", event_type)
        envelope = parse_envelope(poison.value())  # a well-formed envelope
        assert (envelope.schema_version, envelope.sequence) == (99, 1)
        letters = poison.expect_letters()
        assert letters
        for service in subscribers(topic):
            processor = EventProcessor(ROUTERS[service], new_uow=_no_uow)
            if service in letters:  # a PermanentError is dead-lettered after one attempt
                with pytest.raises(PermanentError):
                    processor.decode(envelope)
            else:  # ignored before its version is looked at
                assert processor.decode(envelope) is None


def _no_uow() -> Any:
    raise AssertionError("decoding needs no unit of work")


async def test_every_poison_kind_is_drawn_on_every_topic(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["poison"], seed=8), actuator), run, 30)

    poisons = [p for c in actuator.calls if c[0] == "poison" for p in c[1][0]]
    assert {p.kind for p in poisons} == set(POISON_KINDS)
    assert {p.topic for p in poisons} == set(TOPICS)
    for p in poisons:
        assert (p.event_type is not None) == (p.kind == "unknown_version")
        assert p.event_type is None or p.event_type in handled_types(p.topic)


# --- against the real Kafka, on topics of the test's own ---------------------------------------


def _envelope(correlation_id: str, aggregate_id: str) -> Envelope:
    return Envelope.model_validate(
        {
            "event_id": uuid4(),
            "event_type": "OrderPlaced",
            "schema_version": 1,
            "source": "order",
            "aggregate_type": "order",
            "aggregate_id": aggregate_id,
            "sequence": 1,
            "occurred_at": "2025-01-01T00:00:00Z",
            "correlation_id": correlation_id,
            "payload": {"n": aggregate_id},
        }
    )


async def _read_at(topic: str, partition: int, offset: int) -> Any:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        return await asyncio.wait_for(consumer.getone(tp), 10.0)
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_duplicates_are_byte_identical_copies_of_the_run_s_records() -> None:
    topic = unique("nemesis_dup")
    await create_topics(topic, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap())
    await producer.start()
    ours = {}
    try:
        early = _envelope(f"load-t1-{uuid4()}", "order-early")  # before the run's start
        before = await producer.send_and_wait(topic, early.to_bytes(), key=b"e", partition=0)
        start = {p: (before.offset + 1 if p == 0 else 0) for p in range(3)}
        for n in range(12):
            envelope = _envelope(f"load-t1-{uuid4()}", f"order-{n}")
            headers = [("event_type", b"OrderPlaced"), ("n", str(n).encode())]
            key = f"order-{n}".encode()
            await producer.send_and_wait(topic, envelope.to_bytes(), key=key, headers=headers)
            ours[str(envelope.event_id)] = (key, envelope.to_bytes(), headers)
            other = _envelope(f"load-other-{uuid4()}", f"other-{n}")  # another run's
            await producer.send_and_wait(topic, other.to_bytes(), key=f"other-{n}".encode())
        poison = Poison("poison-t1-1", "orders", "unknown_version", "OrderPlaced")
        await producer.send_and_wait(topic, poison.value(), key=b"poison-t1-1")
        await producer.send_and_wait(topic, b"not json", key=b"order-x")
    finally:
        await producer.stop()
    info = run_info(["duplicates"], start_offsets={topic: start})

    injected = await publish_duplicates(
        kafka_bootstrap(), info, 8, random.Random(1), topics=[topic]
    )

    assert len(injected) == 8
    assert len({i.event_id for i in injected}) == 8
    assert str(early.event_id) not in {i.event_id for i in injected}
    for item in injected:
        assert item.kind == "duplicate"
        assert item.event_id in ours  # none of another run, no poison, nothing malformed
        key, value, headers = ours[item.event_id]
        copy = await _read_at(item.topic, item.partition, item.offset)
        assert (copy.key, copy.value, list(copy.headers)) == (key, value, headers)
        assert item.key == key.decode()


@pytest.mark.integration
async def test_a_replay_republishes_the_run_s_first_records_of_each_partition_in_order() -> None:
    topic = unique("nemesis_replay")
    await create_topics(topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap())
    await producer.start()
    sent: dict[int, list[str]] = {0: [], 1: []}
    try:
        early = _envelope(f"load-t1-{uuid4()}", "sku-early")  # before the run's start
        before = await producer.send_and_wait(topic, early.to_bytes(), key=b"e", partition=0)
        for n in range(10):
            partition = n % 2
            other = _envelope(f"load-other-{uuid4()}", f"other-{n}")  # another run's
            await producer.send_and_wait(topic, other.to_bytes(), key=b"o", partition=partition)
            envelope = _envelope(f"load-t1-{uuid4()}", f"sku-{n}")
            key = f"sku-{n}".encode()
            await producer.send_and_wait(topic, envelope.to_bytes(), key=key, partition=partition)
            sent[partition].append(str(envelope.event_id))
    finally:
        await producer.stop()
    info = run_info(["replay"], start_offsets={topic: {0: before.offset + 1, 1: 0}})

    injected = await publish_replay(kafka_bootstrap(), info, 6, topics=[topic])

    # The first six records of each partition: three of the run's, three of another run's.
    by_partition = {p: [i.event_id for i in injected if i.partition == p] for p in (0, 1)}
    assert by_partition == {0: sent[0][:3], 1: sent[1][:3]}
    for item in injected:
        copy = await _read_at(item.topic, item.partition, item.offset)
        assert str(parse_envelope(copy.value).event_id) == item.event_id


@pytest.mark.integration
async def test_poison_lands_where_it_is_logged_with_the_letters_it_must_raise() -> None:
    topics = {logical: unique(f"nemesis_{logical}") for logical in TOPICS}
    await create_topics(*topics.values(), partitions=2)
    poisons = [
        Poison("poison-t1-1", "orders", "not_json"),
        Poison("poison-t1-2", "stock", "not_envelope"),
        Poison("poison-t1-3", "shipping", "unknown_version", "ShipmentDispatched"),
        Poison("poison-t1-4", "orders", "unknown_version", "OrderPlaced"),
    ]

    injected = await publish_poison(kafka_bootstrap(), poisons, topics=topics)

    assert [(i.key, i.topic) for i in injected] == [(p.key, topics[p.topic]) for p in poisons]
    assert [i.expect_letters for i in injected] == [
        ["inventory", "shipping"],
        ["order"],
        ["order", "inventory"],
        ["inventory"],
    ]
    for item, poison in zip(injected, poisons, strict=True):
        record = await _read_at(item.topic, item.partition, item.offset)
        assert record.key == poison.key.encode()
        assert dict(record.headers)["nemesis"] == poison.kind.encode()
        if poison.kind == "unknown_version":
            assert parse_envelope(record.value).aggregate_id == poison.key
        else:
            with pytest.raises(MalformedEnvelopeError):
                parse_envelope(record.value)
