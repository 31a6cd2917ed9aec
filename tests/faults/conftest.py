"""Fault-injection fixtures: a producer side and a consumer side, each with its own real
database, and relay/consumer/writer processes that a test can SIGKILL at a failpoint; and
``report``, which tells what a test saw happen in the session's "what happened" section
(see ``tests.faults.what_happened``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from shared.testing.infra import (
    create_database,
    create_topics,
    drop_database,
    kafka_bootstrap,
    start_group_at_end,
    unique,
)
from shared.testing.worker import APPLIED_TABLE
from tests.faults import what_happened
from tests.faults.what_happened import Report

LOGS = Path(__file__).resolve().parents[2] / ".state" / "logs" / "faults"


@dataclass
class Side:
    """One service's worth of state: its name (consumer group, DLQ) and its database."""

    name: str
    url: str
    pool: asyncpg.Pool

    async def applied(self) -> list[str]:
        rows = await self.pool.fetch("SELECT reason FROM applied ORDER BY id")
        return [r["reason"] for r in rows]

    async def count(self, table: str) -> int:
        count: int = await self.pool.fetchval(f"SELECT count(*) FROM {table}")
        return count

    def log(self, role: str) -> Path:
        """Where the workers of ``role`` on this side write (every start appends)."""
        return LOGS / f"{self.name}-{role}.log"

    def consumed(self, aggregate_id: str) -> list[tuple[int, str]]:
        """``(sequence, outcome)`` of each event of ``aggregate_id`` its consumers handled, in
        the order they logged them: ``applied``, ``parked``, ``duplicate``, ... An event
        applied once its gap filled has only its ``parked`` line."""
        seen: list[tuple[int, str]] = []
        path = self.log("consumer")
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(entry, dict)
                and entry.get("aggregate_id") == aggregate_id
                and {"outcome", "sequence"} <= entry.keys()
            ):
                seen.append((int(entry["sequence"]), str(entry["outcome"])))
        return seen


@dataclass
class Workers:
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, side: Side, role: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = side.log(role).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.testing.worker", role, *args],
            env={
                **os.environ,
                "SERVICE_NAME": side.name,
                "DATABASE_URL": side.url,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap(),
                "OTEL_SDK_DISABLED": "true",
                "RELAY_POLL_INTERVAL_SECONDS": "0.2",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started.append(process)
        return process

    def run(self, side: Side, role: str, *args: str, **env: str) -> int:
        """Run to the end (or to the failpoint's SIGKILL); the exit status."""
        return self.start(side, role, *args, **env).wait(timeout=60)


@pytest.fixture
def workers() -> Iterator[Workers]:
    workers = Workers()
    try:
        yield workers
    finally:
        for process in workers.started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


async def new_side(prefix: str) -> Side:
    url = await create_database()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    await pool.execute(APPLIED_TABLE)
    return Side(unique(prefix), url, pool)


async def close_side(side: Side) -> None:
    await side.pool.close()
    await drop_database(side.url)


@pytest.fixture
async def producer_side() -> AsyncIterator[Side]:
    side = await new_side("fp")
    try:
        yield side
    finally:
        await close_side(side)


@pytest.fixture
async def consumer_side() -> AsyncIterator[Side]:
    side = await new_side("fc")
    await create_topics(f"{side.name}.dlq")
    await start_group_at_end(f"{side.name}-service", ["orders"])
    try:
        yield side
    finally:
        await close_side(side)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report(pitfall, env, happened)``: what the test observed, for the summary."""
    return what_happened.reporter(request)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The "what happened" section: one line per protected and per pitfall run."""
    what_happened.summarize(terminalreporter, config)
