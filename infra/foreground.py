"""`run`: start everything, follow the logs in the foreground, stop it all on Ctrl-C."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType

from infra import components, process
from infra.console import say
from infra.settings import COMPONENTS, InfraError, log_path

WIDTH = max(len(name) for name in COMPONENTS)


class StopRequestedError(Exception):
    """SIGINT or SIGTERM arrived: time to stop everything."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise StopRequestedError(signal.Signals(signum).name)


def run() -> int:
    """Start the suite, print its log lines until interrupted, then stop it; exit code."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # Start following where the logs end now, so this run's startup lines are shown.
    follower = _LogFollower({name: log_path(name) for name in COMPONENTS})
    code = 0
    try:
        components.start()
        say("==> everything is ready; following the logs (Ctrl-C stops everything)")
        follower.follow_forever()
    except StopRequestedError as why:
        follower.drain()
        say(f"==> {why}: stopping everything")
    except InfraError as error:
        follower.drain()
        say(f"error: {error}")
        say("==> stopping what was started")
        code = 1
    finally:
        # A second Ctrl-C must not abandon half-stopped processes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        components.stop()
    return code


class _LogFollower:
    """Tails several log files at once, prefixing each line with its component."""

    def __init__(self, logs: dict[str, Path]) -> None:
        self._logs = logs
        self._offsets = {name: _size(path) for name, path in logs.items()}
        self._partial = dict.fromkeys(logs, b"")
        self._alive: dict[str, bool] = {}

    def follow_forever(self) -> None:
        self._alive = {name: process.running_pid(name) is not None for name in self._logs}
        while True:
            self.drain()
            self._report_exits()
            time.sleep(0.2)

    def drain(self) -> None:
        for name, path in self._logs.items():
            for line in self._new_lines(name, path):
                say(f"{name:<{WIDTH}} | {line}")

    def _new_lines(self, name: str, path: Path) -> list[str]:
        size = _size(path)
        if size < self._offsets[name]:  # truncated or replaced: start over
            self._offsets[name], self._partial[name] = 0, b""
        if size == self._offsets[name]:
            return []
        with path.open("rb") as handle:
            handle.seek(self._offsets[name])
            data = self._partial[name] + handle.read()
            self._offsets[name] = handle.tell()
        *complete, self._partial[name] = data.split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]

    def _report_exits(self) -> None:
        # A component that dies (crash, `python -m infra kill`) is announced once.
        for name, was_alive in self._alive.items():
            alive = process.running_pid(name) is not None
            if was_alive and not alive:
                say(f"{name:<{WIDTH}} | !! process exited (see {self._logs[name]})")
            self._alive[name] = alive


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
