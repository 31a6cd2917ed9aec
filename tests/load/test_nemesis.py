"""The nemesis: its seeded schedule, its pairs and its log against a recording actuator that
keeps the state of a pretend world (what runs, what is paused, cut or slowed); what each poison
kind does in the real consumer code; duplicates and poison published to a real Kafka topic of
the test's own; the live actuator's questions to the real cluster. No process of the shared
servers is touched."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
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
from infra.kafka import server_properties
from infra.services import router_of
from infra.settings import (
    KAFKA_BROKERS,
    KAFKA_NODES,
    PROXY_LANES,
    SECOND_INSTANCES,
    SERVICE_PROCESSES,
    SERVICES,
    ports,
)
from infra.toxiproxy import lane_proxies
from load import nemesis as nemesis_module
from load.nemesis import (
    ACTIONS,
    BROKER_FAULTS,
    BROKER_SESSION_TIMEOUT_SECONDS,
    DEFAULT_COMPONENTS,
    NODE_ACTIONS,
    PAUSE_SECONDS,
    POISON_KINDS,
    SESSION_TIMEOUT_SECONDS,
    TOPICS,
    LiveActuator,
    Nemesis,
    NemesisError,
    Poison,
    actions_for,
    handled_types,
    proxies,
    publish_duplicates,
    publish_poison,
    publish_replay,
    subscribers,
)
from load.runinfo import Injected, NemesisEntry, RunDir, RunInfo, now
from shared.consuming.processing import EventProcessor, PermanentError
from shared.consuming.routing import Router
from shared.contracts.envelope import Envelope, MalformedEnvelopeError, parse_envelope
from shared.kafka import new_consumer
from shared.service.settings import ServiceSettings
from shared.testing.infra import create_topics, eventually, kafka_bootstrap, unique

# The node actions need a cluster of three (the default); a test run with KAFKA_BROKERS=1 skips.
cluster = pytest.mark.skipif(KAFKA_BROKERS < 3, reason="needs KAFKA_BROKERS >= 3")
# The pretend world's pids, one per process the nemesis may signal.
PIDS = {name: 4001 + n for n, name in enumerate((*KAFKA_NODES, *SERVICE_PROCESSES))}
ROUTERS: dict[str, Router[Any]] = {service: router_of(service) for service in SERVICES}


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
    """Records every call as (operation, arguments); ``failing`` operations raise (after
    being recorded, without changing the world). Keeps a pretend world: the components
    running, the pids stopped, the proxies disabled and the toxics on; :meth:`clean` says
    whether it is as a healed run leaves it."""

    failing: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    gone: bool = True  # what wait_gone answers
    controller: str = "kafka-2"
    running: set[str] = field(default_factory=lambda: set(DEFAULT_COMPONENTS))
    stopped: set[int] = field(default_factory=set)  # pids SIGSTOPped
    disabled: set[str] = field(default_factory=set)  # proxies
    toxics: set[tuple[str, str]] = field(default_factory=set)  # (proxy, toxic)

    def _record(self, operation: str, *args: Any) -> None:
        self.calls.append((operation, args))
        if operation in self.failing:
            raise RuntimeError(f"{operation} failed (on purpose)")

    def ops(self) -> list[str]:
        return [operation for operation, _ in self.calls]

    def clean(self) -> bool:
        return (self.running, self.stopped, self.disabled, self.toxics) == (
            set(DEFAULT_COMPONENTS),
            set(),
            set(),
            set(),
        )

    async def kill(self, name: str) -> None:
        self._record("kill", name)
        self.running.discard(name)

    async def stop(self, *names: str) -> None:
        self._record("stop", *names)
        self.running.difference_update(names)

    async def start(self, *names: str, env: Mapping[str, str] | None = None) -> None:
        self._record("start", names, dict(env or {}))
        self.running.update(names)

    async def pid(self, name: str) -> int | None:
        self._record("pid", name)
        return PIDS[name] if name in self.running else None

    async def signal(self, pid: int, sig: signal.Signals) -> None:
        self._record("signal", pid, sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(pid)
        if sig == signal.SIGCONT:
            self.stopped.discard(pid)

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
        self.toxics.add((proxy, name))

    async def remove_toxic(self, proxy: str, name: str) -> None:
        self._record("remove_toxic", proxy, name)
        self.toxics.discard((proxy, name))

    async def set_enabled(self, proxy: str, enabled: bool) -> None:
        self._record("set_enabled", proxy, enabled)
        (self.disabled.discard if enabled else self.disabled.add)(proxy)

    async def reset_toxics(self) -> None:
        self._record("reset_toxics")
        self.disabled.clear()
        self.toxics.clear()

    async def partition_leader(self, topic: str, partition: int) -> str:
        self._record("partition_leader", topic, partition)
        return KAFKA_NODES[partition % len(KAFKA_NODES)]

    async def active_controller(self) -> str:
        self._record("active_controller")
        return self.controller

    async def wait_in_sync(self, timeout: float) -> None:
        self._record("wait_in_sync")

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


def fast(
    run: RunDir, info: RunInfo, actuator: RecordingActuator, *, pair_chance: float = 0.0
) -> Nemesis:
    """Every wait zero; one action at a time unless ``pair_chance`` says otherwise."""
    return Nemesis(
        run,
        info,
        actuator,
        mean_interval=1.0,
        first_after=0.0,
        time_scale=0.0,
        pair_chance=pair_chance,
    )


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
        await run_until(nemesis, run, 40)  # pairs among them: their lags are moments too
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


async def test_a_restart_takes_the_database_or_every_kafka_node_down_and_waits_for_the_services(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["kafka", "postgres"], seed=2), actuator), run, 12)

    starts = [e for e in run.nemesis() if e.phase == "start"]
    assert {(e.action, e.detail.split()[0].rstrip(",")) for e in starts} == {
        (action, how) for action in ("kafka", "postgres") for how in ("SIGKILL", "stop")
    }  # both, each killed and stopped gracefully, seeded
    calls = iter(actuator.calls)
    for start in starts:
        names = KAFKA_NODES if start.action == "kafka" else ("postgres",)
        # SIGKILLed one after the other, or stopped together (in one call).
        downs = (
            [("kill", (name,)) for name in names]
            if start.detail.startswith("SIGKILL")
            else [("stop", names)]
        )
        assert [next(calls) for _ in range(len(downs) + 2)] == [
            *downs,
            ("start", (names, {})),
            ("wait_ready", (SERVICES,)),
        ]
    assert actuator.clean()


async def test_pause_stops_a_service_past_its_session_timeout_then_continues_it(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["pause"]), actuator), run, 1)

    (_, (service,)), stopped, continued, ready = actuator.calls[:4]
    pid = PIDS[service]
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


async def test_latency_and_reset_hit_every_lane_s_proxy_of_the_group_then_undo_it(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await run_until(fast(run, run_info(["latency", "reset"], seed=9), actuator), run, 20)

    groups = {"postgres": proxies(["postgres"]), "kafka": proxies(KAFKA_NODES)}
    calls = iter(actuator.calls)
    seen = set()
    for start in (e for e in run.nemesis() if e.phase == "start"):
        group = groups[start.target]
        streams = ("downstream", "upstream") if start.action == "latency" else ("downstream",)
        made = [next(calls) for _ in range(len(group) * len(streams))]
        undone = [next(calls) for _ in made]
        if "disabled" in start.detail:
            kind = "disabled"
            assert made == [("set_enabled", (proxy, False)) for proxy in group]
            assert undone == [("set_enabled", (proxy, True)) for proxy in group]
        else:
            kind = made[0][1][2]  # the toxic's type
            assert [(c[0], c[1][0], c[1][4]) for c in made] == [
                ("add_toxic", proxy, stream) for proxy in group for stream in streams
            ]
            assert undone == [("remove_toxic", c[1][:2]) for c in made]
        seen.add((start.action, start.target, kind))
    assert {kind for _, _, kind in seen} == {"latency", "reset_peer", "disabled"}
    assert {target for _, target, _ in seen} == {"postgres", "kafka"}
    latencies = [c[1][3] for c in actuator.calls if c[0] == "add_toxic" and c[1][2] == "latency"]
    assert all(100 <= a["latency"] <= 300 and a["jitter"] > 0 for a in latencies)
    assert actuator.clean()


async def test_a_toxic_is_removed_even_when_the_run_fails_while_it_is_on(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator(failing={"remove_toxic"})
    await run_until(fast(run, run_info(["latency"]), actuator), run, 1)

    start, end = run.nemesis()[:2]
    toxics = 2 * len(proxies(KAFKA_NODES if start.target == "kafka" else ["postgres"]))
    assert actuator.ops()[: 2 * toxics] == ["add_toxic"] * toxics + ["remove_toxic"] * toxics
    assert end.phase == "error"


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


# --- the cluster's faults, one service isolated -----------------------------------------------


async def one_step(
    path: Path, action: str, seed: int, actuator: RecordingActuator | None = None
) -> tuple[list[NemesisEntry], RecordingActuator]:
    """Run ``action`` once to its end (its holds a ten-thousandth of their length), then stop:
    its log entries and the actuator."""
    run = RunDir(path / f"{action}-{seed}")
    run.path.mkdir()
    actuator = actuator or RecordingActuator()
    info = run_info([action], seed=seed)
    nemesis = Nemesis(
        run, info, actuator, first_after=0.0, mean_interval=1e6, time_scale=1e-4, pair_chance=0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(nemesis.run(stop))
    while len(run.nemesis()) < 2:
        assert not task.done()
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 5.0)
    return run.nemesis(), actuator


def seconds_in(detail: str) -> float:
    """The first "<n> s" of a log detail."""
    return float(re.findall(r"([\d.]+) s\b", detail)[0])


@cluster
async def test_leader_kills_the_leader_of_a_drawn_partition_and_starts_it_again(
    tmp_path: Path,
) -> None:
    targets = set()
    for seed in range(8):
        (start, end), actuator = await one_step(tmp_path, "leader", seed)
        aimed = re.fullmatch(r"(\w+)\[(\d+)\]", start.target)
        assert aimed is not None
        topic, partition = aimed.groups()
        node = KAFKA_NODES[int(partition) % len(KAFKA_NODES)]  # the fake's leader
        assert actuator.calls == [
            ("partition_leader", (topic, int(partition))),
            ("kill", (node,)),
            ("start", ((node,), {})),
            ("wait_ready", (SERVICES,)),
        ]
        assert 3.0 <= seconds_in(start.detail) <= 10.0
        assert (end.phase, end.detail.split()[0]) == ("end", node)  # the node it hit
        targets.add(topic)
    assert len(targets) > 1
    assert targets <= set(TOPICS)


@cluster
async def test_controller_kills_the_active_controller_and_starts_it_again(tmp_path: Path) -> None:
    (start, end), actuator = await one_step(
        tmp_path, "controller", 1, RecordingActuator(controller="kafka-3")
    )

    assert actuator.calls == [
        ("active_controller", ()),
        ("kill", ("kafka-3",)),
        ("start", (("kafka-3",), {})),
        ("wait_ready", (SERVICES,)),
    ]
    assert 3.0 <= seconds_in(start.detail) <= 10.0
    assert end.detail.startswith("kafka-3 ")


@cluster
async def test_a_node_that_does_not_come_back_is_an_error_naming_it(tmp_path: Path) -> None:
    (_, end), _ = await one_step(tmp_path, "controller", 1, RecordingActuator(failing={"start"}))

    assert end.phase == "error"
    assert end.detail.startswith("NemesisError: kafka-2: RuntimeError: start failed")


@cluster
async def test_broker_pause_stops_a_node_past_its_session_timeout_and_waits_until_in_sync(
    tmp_path: Path,
) -> None:
    nodes = set()
    for seed in range(6):
        (start, _), actuator = await one_step(tmp_path, "broker-pause", seed)
        pid = PIDS[start.target]
        assert actuator.calls == [
            ("pid", (start.target,)),
            ("signal", (pid, signal.SIGSTOP)),
            ("signal", (pid, signal.SIGCONT)),
            ("wait_in_sync", ()),
        ]
        assert BROKER_SESSION_TIMEOUT_SECONDS < 8.0 <= seconds_in(start.detail) <= 15.0
        nodes.add(start.target)
    assert len(nodes) > 1
    assert nodes <= set(KAFKA_NODES)


def test_the_broker_session_timeout_is_the_one_the_cluster_runs_with() -> None:
    properties = dict(
        line.split("=", 1) for line in server_properties(1, ports()).splitlines() if "=" in line
    )
    assert int(properties["broker.session.timeout.ms"]) == BROKER_SESSION_TIMEOUT_SECONDS * 1000


@cluster
async def test_broker_cut_disables_one_node_s_proxy_in_every_lane_then_enables_them(
    tmp_path: Path,
) -> None:
    (start, _), actuator = await one_step(tmp_path, "broker-cut", 3)

    cut = [f"{start.target}.{lane}" for lane in PROXY_LANES]
    assert actuator.calls == [
        *(("set_enabled", (proxy, False)) for proxy in cut),
        *(("set_enabled", (proxy, True)) for proxy in cut),
    ]
    assert 5.0 <= seconds_in(start.detail) <= 15.0


async def test_isolate_cuts_one_service_process_off_kafka_and_sometimes_postgres(
    tmp_path: Path,
) -> None:
    seen = set()
    for seed in range(10):
        (start, _), actuator = await one_step(tmp_path, "isolate", seed)
        lane = start.target
        cut = [f"{node}.{lane}" for node in KAFKA_NODES]
        if "PostgreSQL" in start.detail:
            cut.append(f"postgres.{lane}")
        assert actuator.calls == [
            *(("set_enabled", (proxy, False)) for proxy in cut),
            *(("set_enabled", (proxy, True)) for proxy in cut),
        ]
        seen.add((lane, "PostgreSQL" in start.detail))
    assert {lane for lane, _ in seen} == set(SERVICES)  # no second instance runs
    assert {postgres for _, postgres in seen} == {True, False}


async def test_isolate_may_cut_off_the_second_instance_scale_runs(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    info = run_info(["scale", "isolate"], seed=3)
    nemesis = Nemesis(
        run, info, RecordingActuator(), first_after=0.0, time_scale=1e-3, pair_chance=1.0
    )
    await run_until(nemesis, run, 60)

    entries = run.nemesis()
    isolated = [e for e in entries if e.action == "isolate" and e.phase == "start"]
    seconds = [e for e in isolated if e.target in SECOND_INSTANCES]
    assert seconds
    assert len(seconds) < len(isolated)  # first instances too
    for entry in seconds:  # while that instance ran: its scale had begun and not ended
        scale = [e for e in entries if e.action == "scale" and e.target == entry.target]
        assert any(
            a.phase == "start" and a.t <= entry.t and (b.phase == "end" and entry.t <= b.t)
            for a, b in itertools.pairwise(scale)
        )


# Every action that changes the world: stopped in the middle, it leaves the world as it was.
WORLD_ACTIONS = [a for a in ACTIONS if a not in ("duplicates", "replay", "poison")]


@pytest.mark.parametrize("action", WORLD_ACTIONS)
async def test_an_action_stopped_mid_way_undoes_itself_promptly(
    tmp_path: Path, action: str
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    nemesis = Nemesis(run, run_info([action], seed=2), actuator, first_after=0.0, pair_chance=0)
    stop = asyncio.Event()
    task = asyncio.create_task(nemesis.run(stop))  # real time: every hold lasts seconds
    while not run.nemesis():
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.02)  # into its hold
    began = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 2.0)

    assert time.monotonic() - began < 1.0
    assert [(e.action, e.phase) for e in run.nemesis()] == [(action, "start"), (action, "end")]
    assert actuator.clean(), actuator.calls


def test_the_node_actions_are_offered_on_a_cluster_of_three_or_more() -> None:
    assert not set(NODE_ACTIONS) & set(actions_for(1))
    assert {"kafka", "isolate", "latency", "reset"} <= set(actions_for(1))
    assert actions_for(3) == (*actions_for(1), *NODE_ACTIONS)
    assert actions_for(KAFKA_BROKERS) == ACTIONS
    assert set(NODE_ACTIONS) | {"kafka"} == BROKER_FAULTS


def test_a_node_action_is_refused_on_a_single_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nemesis_module, "ACTIONS", actions_for(1))
    with pytest.raises(ValueError, match="needs a Kafka cluster of 3 or more nodes"):
        Nemesis(RunDir(tmp_path), run_info(["kill", "leader"]), RecordingActuator())


def test_the_proxy_groups_are_the_launcher_s_proxies() -> None:
    every = {name for name, _, _ in lane_proxies(ports())}
    assert set(proxies(["postgres", *KAFKA_NODES])) == every
    assert proxies(["postgres"]) == [f"postgres.{lane}" for lane in PROXY_LANES]
    assert proxies(KAFKA_NODES, ["order-2"]) == [f"{node}.order-2" for node in KAFKA_NODES]
    assert nemesis_module._kafka() == ports().bootstrap_servers()  # every node, not one


# --- two faults at once ----------------------------------------------------------------------


async def test_pairs_follow_the_seed_and_never_hold_two_broker_faults_at_once(
    tmp_path: Path,
) -> None:
    runs = [RunDir(tmp_path / name) for name in ("a", "b", "c")]
    for run, seed in zip(runs, (11, 11, 12), strict=True):
        run.path.mkdir()
        nemesis = fast(run, run_info(ACTIONS, seed=seed), RecordingActuator(), pair_chance=1 / 3)
        await run_until(nemesis, run, 120)

    first, again, other = (choices(run, 120) for run in runs)
    assert first == again
    assert first != other
    for run in runs:
        starts = [e for e in run.nemesis() if e.phase == "start"]
        pairs = [e.target.split("+") for e in starts if e.action == "pair"]
        assert pairs
        assert all(a != b and not {a, b} <= BROKER_FAULTS for a, b in pairs)
        assert len(starts) > 3 * len(pairs)  # single steps too
        broker_faults_on = 0
        for entry in run.nemesis():
            if entry.action in BROKER_FAULTS:
                broker_faults_on += 1 if entry.phase == "start" else -1
                assert broker_faults_on <= 1, run.nemesis()


async def test_a_pair_runs_its_two_actions_at_once_within_an_entry_of_its_own(
    tmp_path: Path,
) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    info = run_info(["latency", "isolate", "broker-pause"], seed=6)
    nemesis = Nemesis(run, info, actuator, first_after=0.0, time_scale=1e-3, pair_chance=1.0)
    await run_until(nemesis, run, 30)

    entries = run.nemesis()
    pairs = [e for e in entries if e.action == "pair"]
    overlapping = 0
    for start, end in zip(pairs[::2], pairs[1::2], strict=True):
        assert (start.phase, end.phase, start.target) == ("start", "end", end.target)
        first, second = start.target.split("+")
        within = entries[entries.index(start) + 1 : entries.index(end)]
        assert [(e.action, e.phase) for e in within if e.phase == "start"] == [
            (first, "start"),
            (second, "start"),
        ]
        assert {(e.action, e.phase) for e in within if e.phase != "start"} == {
            (first, "end"),
            (second, "end"),
        }
        overlapping += [e.action for e in within].index(second) < [
            (e.action, e.phase) for e in within
        ].index((first, "end"))
    assert overlapping  # the second began while the first was on
    assert actuator.clean()


async def test_a_pair_stopped_mid_way_undoes_both(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    info = run_info(["broker-pause", "isolate"], seed=1)
    nemesis = Nemesis(run, info, actuator, first_after=0.0, time_scale=0.1, pair_chance=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(nemesis.run(stop))
    while sum(e.phase == "start" for e in run.nemesis()) < 3:  # the pair and both actions
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 2.0)

    assert [e.phase for e in run.nemesis()].count("end") == 3
    assert actuator.clean(), actuator.calls


# --- heal ------------------------------------------------------------------------------------


async def test_heal_undoes_everything_and_is_logged(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    actuator = RecordingActuator()
    await Nemesis(run, run_info(ACTIONS), actuator).heal()

    assert actuator.calls[0] == ("reset_toxics", ())
    continued = [c[1][0] for c in actuator.calls if c[0] == "signal"]
    assert continued == [PIDS[name] for name in (*KAFKA_NODES, *SERVICES)]  # those running
    assert all(c[1][1] == signal.SIGCONT for c in actuator.calls if c[0] == "signal")
    assert [c[1] for c in actuator.calls if c[0] == "stop"] == [
        ("order-2",),
        ("inventory-2",),
        ("shipping-2",),
    ]
    assert ("start", (DEFAULT_COMPONENTS, {})) in actuator.calls
    assert set(KAFKA_NODES) <= set(DEFAULT_COMPONENTS)
    assert actuator.calls[-2:] == [("wait_in_sync", ()), ("wait_ready", (SERVICES,))]
    assert [(e.action, e.phase) for e in run.nemesis()] == [("heal", "start"), ("heal", "end")]


async def test_heal_continues_a_paused_node_ends_a_cut_and_starts_a_node_that_is_down(
    tmp_path: Path,
) -> None:
    actuator = RecordingActuator()
    actuator.stopped.add(PIDS[KAFKA_NODES[-1]])  # a broker-pause cut short
    actuator.disabled.update(proxies([KAFKA_NODES[-1]]))  # a broker-cut
    actuator.disabled.update(proxies(KAFKA_NODES, ["order"]))  # an isolation
    actuator.toxics.add(("postgres.order-2", "nemesis-latency-upstream"))
    actuator.running.discard(KAFKA_NODES[0])  # a leader killed
    actuator.running.add("shipping-2")
    assert not actuator.clean()

    await Nemesis(RunDir(tmp_path), run_info(ACTIONS), actuator).heal()

    assert actuator.clean()
    assert "wait_in_sync" in actuator.ops()


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
    with pytest.raises(MalformedEnvelopeError):  # Applier.apply dead-letters these
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


@pytest.mark.integration
async def test_the_live_actuator_asks_the_cluster_for_leaders_the_controller_and_sync() -> None:
    """Questions only: no node of the shared cluster is touched."""
    topic = unique("nemesis_leader")
    await create_topics(topic, partitions=2)
    actuator = LiveActuator()

    async def leaders() -> set[str]:
        try:
            return {await actuator.partition_leader(topic, p) for p in (0, 1)}
        except NemesisError:  # the new topic's leaders not elected yet
            return set()

    assert await eventually(leaders, bool) <= set(KAFKA_NODES)
    with pytest.raises(NemesisError, match=r"\[7\] has no leader"):
        await actuator.partition_leader(topic, 7)
    assert await actuator.active_controller() in KAFKA_NODES
    await actuator.wait_in_sync(60.0)  # the suite's topics, between other tests' faults
