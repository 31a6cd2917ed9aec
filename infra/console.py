"""Progress output: step lines, heartbeats during long waits, log tails on failure."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_SECONDS = 20.0


_output = threading.Lock()


def say(message: str) -> None:
    # Flushed at once: output is often piped (make, CI) where buffering hides progress.
    # Locked: components stop in parallel threads and lines must not interleave.
    with _output:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


@contextmanager
def heartbeat(what: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Print ``what`` with the elapsed time every ``every`` seconds until the block ends.

    Long silent steps (a cold Go build) look hung otherwise.
    """
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            say(f"    ... {what} ({duration(time.monotonic() - started)} elapsed)")

    thread = threading.Thread(target=beat, name=f"heartbeat: {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def poll(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    abort: Callable[[], str | None] = lambda: None,
) -> str | None:
    """Call ``check`` until it is true; return ``None`` on success or why it gave up.

    ``abort`` is consulted between attempts so a process that died is reported at once
    instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return None
        reason = abort()
        if reason is not None:
            return reason
        if time.monotonic() >= deadline:
            return f"not ready after {duration(timeout)}"
        time.sleep(interval)


def tail(path: Path, lines: int = 25, offset: int = 0) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return "(no log yet)"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in text) if text else "(log is empty)"
