"""Failpoints: named places where a fault test can make the process die on the spot.

``FAILPOINTS=relay.after_publish`` (comma-separated names) makes the process SIGKILL itself
the first time it passes that point, after ``FAILPOINT_DELAY_SECONDS`` (default 0). Unset in
production, a failpoint is one dictionary lookup. The names in the code:

- ``relay.after_publish``: the broker acknowledged a batch, its rows are not deleted yet.
- ``uow.after_commit``: a business transaction that wrote events committed, nothing published
  yet (one that wrote none passes by).
- ``consumer.after_db_commit``: an event's transaction committed, its offset not yet.
- ``consumer.before_db_commit``: an event was fetched, its transaction not committed yet.
- ``burst.quiet_period``: the test worker's burst of address edits committed, nothing emitted
  (``shared.testing.worker burst``).
- ``handler.raise``: not a kill: the handler raises (see :func:`raise_if_armed`).
"""

from __future__ import annotations

import asyncio
import os
import signal


def _armed() -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get("FAILPOINTS", "").split(",") if n.strip())


ARMED = _armed()


async def failpoint(name: str) -> None:
    if name in ARMED:
        # An asynchronous wait: background tasks (auto-commit, heartbeats) keep running.
        await asyncio.sleep(float(os.environ.get("FAILPOINT_DELAY_SECONDS", "0")))
        os.kill(os.getpid(), signal.SIGKILL)


class SimulatedBugError(RuntimeError):
    """Raised by the ``handler.raise`` failpoint: a handler bug, for DLQ and replay tests."""


def raise_if_armed(name: str, correlation_id: str) -> None:
    """With ``name`` armed, fail every event whose correlation id starts with
    ``FAILPOINT_CORRELATION_PREFIX`` (all events when it is empty), as a buggy handler
    would; restarting without the failpoint is "deploying the fix"."""
    if name in ARMED and correlation_id.startswith(
        os.environ.get("FAILPOINT_CORRELATION_PREFIX", "")
    ):
        raise SimulatedBugError(f"simulated handler bug (failpoint {name})")
