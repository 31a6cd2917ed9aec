"""Start, stop and inspect components; the API the CLI and the tests use.

    from infra import components
    components.start("kafka")          # idempotent; also starts what kafka needs (nothing)
    components.kill("kafka-2")         # SIGKILL one node of the cluster, for chaos tests
    components.start("kafka-2")        # recovers from the crash (back in sync when it returns)
    components.ports().kafka           # 9092 unless KAFKA_PORT says otherwise
    components.start("order-2")        # optional: a second order instance (also "toxiproxy")

Without names, ``start`` means the default set (:data:`COMPONENTS`); ``stop`` and ``status``
also cover the optional components (:data:`OPTIONAL`) that are running.

Every function raises :class:`InfraError` with an actionable message on failure.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from infra import process
from infra.base import Component
from infra.console import duration, heartbeat, poll, say, tail
from infra.jaeger import Jaeger
from infra.kafka import Kafka
from infra.postgres import Postgres
from infra.services import Service, common_env
from infra.services import service_env as _service_env
from infra.settings import (
    ALL_COMPONENTS,
    COMPONENTS,
    INFRA,
    KAFKA_NODES,
    OPTIONAL,
    PORT_VARIABLES,
    SECOND_INSTANCES,
    SERVICE_PROCESSES,
    SERVICES,
    STAGES,
    InfraError,
    Ports,
    kafka_node_number,
    log_path,
    ports,
)
from infra.toxiproxy import Toxiproxy

__all__ = [
    "ALL_COMPONENTS",
    "COMPONENTS",
    "INFRA",
    "OPTIONAL",
    "SECOND_INSTANCES",
    "SERVICES",
    "SERVICE_PROCESSES",
    "ComponentStatus",
    "InfraError",
    "Ports",
    "environment",
    "install",
    "is_running",
    "kill",
    "log_path",
    "pid",
    "ports",
    "restart",
    "service_env",
    "start",
    "status",
    "stop",
]

REGISTRY: dict[str, Component] = {
    "postgres": Postgres(),
    **{name: Kafka(kafka_node_number(name)) for name in KAFKA_NODES},
    "jaeger": Jaeger(),
    "toxiproxy": Toxiproxy(),
    **{name: Service(name) for name in SERVICE_PROCESSES},
}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    port: int
    state: str  # running | starting | stopped | port taken
    log: Path


def _component(name: str) -> Component:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(ALL_COMPONENTS)
        raise InfraError(f"unknown component {name!r}; one of {known}") from None


def _in_start_order(names: Iterable[str]) -> list[str]:
    chosen = set(names)
    for name in list(chosen):
        chosen.update(_component(name).requires)
    return [name for name in ALL_COMPONENTS if name in chosen]


def install(*names: str) -> None:
    """Fetch or build what ``names`` (default: everything) need; cached."""
    for name in _in_start_order(names or COMPONENTS):
        _component(name).install()


def start(*names: str, infra_only: bool = False) -> None:
    """Start ``names`` (default: the default set) and what they require; idempotent.

    Returns once each one is ready. ``infra_only`` drops the services.
    """
    targets = _in_start_order(names or COMPONENTS)
    if infra_only:
        targets = [name for name in targets if name not in SERVICE_PROCESSES]
    resolved = ports()
    with process.state_lock():
        for name in targets:
            _component(name).install()
        # Nothing depends on a sibling of its own stage, so a stage starts all at once and
        # then waits: the slowest member sets the pace, not the sum of them.
        for stage in STAGES:
            pending = [_launch(_component(name), resolved) for name in targets if name in stage]
            for item in pending:
                _finish(item, resolved)


@dataclass(frozen=True)
class _Pending:
    component: Component
    pid: int
    # Log size before this start, so a failure shows only this attempt's lines.
    offset: int
    already_running: bool
    since: float


def _launch(component: Component, resolved: Ports) -> _Pending:
    since = time.monotonic()
    running = process.running_pid(component.name)
    if running is not None:
        return _Pending(component, running, 0, already_running=True, since=since)
    _check_ports(component, resolved)
    component.prepare(resolved)
    launch = component.launch(resolved)
    log = log_path(component.name)
    offset = log.stat().st_size if log.exists() else 0
    _write_banner(log, launch.argv)
    new_pid = process.spawn(launch.argv, env=launch.env, cwd=launch.cwd, log=log, user=launch.user)
    process.write_record(component.name, new_pid)
    say(f"{component.name}: starting (pid {new_pid}, port {component.main_port(resolved)})")
    return _Pending(component, new_pid, offset, already_running=False, since=since)


def _finish(item: _Pending, resolved: Ports) -> None:
    component = item.component
    if not component.is_ready(resolved):
        _await_ready(component, item.pid, resolved, item.offset)
    component.after_ready(resolved)
    if item.already_running:
        say(f"{component.name}: already running (pid {item.pid})")
    else:
        say(f"{component.name}: ready in {duration(time.monotonic() - item.since)}")


def _write_banner(log: Path, argv: list[str]) -> None:
    # Logs are appended across restarts (useful after a chaos test); mark each start.
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with log.open("a") as handle:
        handle.write(f"----- {stamp} infra: {shlex.join(argv)}\n")


def _check_ports(component: Component, resolved: Ports) -> None:
    for port in component.all_ports(resolved):
        if not process.port_free(port):
            raise InfraError(
                f"{component.name}: port {port} is already in use by another process "
                f"({process.listener_of(port)}), not one started by this launcher; stop it "
                "or choose other ports (see `python -m infra env` for the variables)"
            )


def _await_ready(component: Component, pid: int, resolved: Ports, offset: int) -> None:
    def died() -> str | None:
        return None if process.pid_alive(pid) else "its process exited"

    with heartbeat(f"waiting for {component.name}", every=5.0):
        failure = poll(
            lambda: component.is_ready(resolved),
            timeout=component.ready_timeout,
            abort=died,
            interval=0.25,
        )
    if failure is None:
        return
    log = log_path(component.name)
    raise InfraError(
        f"{component.name} did not become ready: {failure}. Log: {log}\n{tail(log, offset=offset)}"
    )


def stop(*names: str) -> None:
    """Stop ``names`` (default: the default set and the optional components that run),
    services first, each gracefully then SIGKILL."""
    targets = _in_order(names or _default_and_running())
    services = [_component(name) for name in targets if name in SERVICE_PROCESSES]
    infra = [_component(name) for name in reversed(targets) if name not in SERVICE_PROCESSES]
    with process.state_lock():
        # Services are independent of each other: stop them together. Then the
        # infrastructure one by one (Toxiproxy first), PostgreSQL last, after its clients;
        # the Kafka nodes together, since one stopped alone hands its partitions to the
        # others, and the last would wait in vain for a quorum to approve its shutdown.
        with ThreadPoolExecutor(max_workers=len(SERVICE_PROCESSES)) as pool:
            list(pool.map(_stop_one, services))
        kafka = [component for component in infra if component.name in KAFKA_NODES]
        for component in infra:
            if component not in kafka:
                _stop_one(component)
            elif component is kafka[0]:
                with ThreadPoolExecutor(max_workers=len(kafka)) as pool:
                    list(pool.map(_stop_one, kafka))


def _in_order(names: Iterable[str]) -> list[str]:
    chosen = {_component(name).name for name in names}
    return [name for name in ALL_COMPONENTS if name in chosen]


def _default_and_running() -> list[str]:
    return [*COMPONENTS, *(name for name in OPTIONAL if process.running_pid(name) is not None)]


def _stop_one(component: Component) -> None:
    running = process.running_pid(component.name)
    if running is None:
        say(f"{component.name}: not running")
        process.clear_record(component.name)
        return
    started = time.monotonic()
    say(f"{component.name}: stopping (pid {running})")
    graceful = process.terminate(running, component.stop_signal, component.stop_timeout)
    process.clear_record(component.name)
    how = "stopped" if graceful else f"killed after {duration(component.stop_timeout)} timeout"
    say(f"{component.name}: {how} in {duration(time.monotonic() - started)}")


def kill(name: str) -> None:
    """SIGKILL ``name`` and everything in its process group (a crash, for chaos tests)."""
    component = _component(name)
    with process.state_lock():
        running = process.running_pid(component.name)
        if running is None:
            say(f"{component.name}: not running")
            return
        process.kill(running)
        process.clear_record(component.name)
        say(f"{component.name}: killed (pid {running})")


def restart(name: str) -> None:
    """Stop ``name`` gracefully and start it again (with anything it requires)."""
    with process.state_lock():
        stop(name)
        start(name)


def pid(name: str) -> int | None:
    """The pid of ``name`` when running, else None."""
    return process.running_pid(_component(name).name)


def is_running(name: str) -> bool:
    """True when ``name``'s process is alive and its main port accepts connections."""
    component = _component(name)
    return pid(name) is not None and process.port_open(component.main_port(ports()))


def status(*names: str) -> list[ComponentStatus]:
    """The state of ``names`` (default: the default set and the optional ones running)."""
    resolved = ports()
    return [
        _status_of(_component(name), resolved)
        for name in _in_order(names or _default_and_running())
    ]


def _status_of(component: Component, resolved: Ports) -> ComponentStatus:
    port = component.main_port(resolved)
    running = process.running_pid(component.name)
    if running is not None:
        state = "running" if process.port_open(port) else "starting"
    else:
        state = "stopped" if process.port_free(port) else "port taken"
    return ComponentStatus(component.name, running, port, state, log_path(component.name))


def service_env(name: str | None = None) -> dict[str, str]:
    """What the launcher sets for service ``name`` (``order-2`` too); without a name, what
    all services share.

    Always includes the resolved ports, so tests can find every component.
    """
    resolved = ports()
    values = {variable: str(getattr(resolved, f)) for f, (variable, _) in PORT_VARIABLES.items()}
    if name is None:
        return {**values, **common_env(resolved)}
    if name not in SERVICE_PROCESSES:
        known = ", ".join(SERVICE_PROCESSES)
        raise InfraError(f"unknown service {name!r}; one of {known}")
    return {**values, **_service_env(name, resolved)}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in os.environ inside the block, as before after it. The launcher passes
    os.environ to every service it starts, so whatever starts a service inside the block (a
    benchmark variant, a load run's nemesis restarts) starts it with these settings."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
