"""Fault-injection fixtures: a producer side and a consumer side, each with its own real
database, and relay/consumer/writer processes that a test can SIGKILL at a failpoint."""

from __future__ import annotations

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


@dataclass
class Workers:
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, side: Side, role: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = (LOGS / f"{side.name}-{role}.log").open("ab")
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
