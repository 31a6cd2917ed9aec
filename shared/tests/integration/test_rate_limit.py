"""A rate-limited consumer, in a process of its own, against a real backlog in Kafka: it
applies about its limit a second, the rest of the backlog waits in Kafka, and its resident
memory stays flat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import asyncpg

from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import new_envelope
from shared.kafka import Producer
from shared.service.settings import ServiceSettings
from shared.testing.infra import kafka_bootstrap, start_group_at_end, unique
from shared.testing.worker import APPLIED_TABLE
from shared.writing.outbox import to_message

LOGS = Path(__file__).resolve().parents[3] / ".state" / "logs" / "rate-limit"
BACKLOG = 1200  # 12 orders x 100 events
LIMIT = 100  # events a second


async def publish_backlog(settings: ServiceSettings, tag: str) -> None:
    envelopes = [
        new_envelope(
            OrderRejected(order_id=order_id, reason=f"{tag}:{sequence}"),
            source="rate-limit-test",
            aggregate_id=str(order_id),
            sequence=sequence,
            correlation_id=tag,
            causation_id=None,
        )
        for order_id in [uuid4() for _ in range(12)]
        for sequence in range(1, 101)
    ]
    producer = Producer(settings)
    try:
        await producer.publish([to_message(e, "orders") for e in envelopes])
    finally:
        await producer.close()


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("no VmRSS")


def start_consumer(settings: ServiceSettings, limit: int) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "shared.testing.worker", "consumer"],
        env={
            **os.environ,
            "SERVICE_NAME": settings.service_name,
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap(),
            "OTEL_SDK_DISABLED": "true",
            "CONSUMER_RATE_LIMIT_PER_SECOND": str(limit),
        },
        stdout=(LOGS / f"{settings.service_name}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_a_rate_limited_consumer_drains_a_backlog_at_its_rate_with_flat_memory(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    tag = unique("rl")
    await pool.execute(APPLIED_TABLE)
    await start_group_at_end(settings.consumer_group, ["orders"])
    await publish_backlog(settings, tag)
    worker = start_consumer(settings, LIMIT)

    async def applied() -> int:
        count: int = await pool.fetchval(
            "SELECT count(*) FROM applied WHERE reason LIKE $1", f"{tag}:%"
        )
        return count

    try:
        deadline = time.monotonic() + 30
        while await applied() == 0:  # joined the group, started on the backlog
            assert time.monotonic() < deadline, "the consumer never started"
            await asyncio.sleep(0.2)
        samples: list[tuple[float, int, int]] = []
        for _ in range(7):
            await asyncio.sleep(1.0)
            samples.append((time.monotonic(), await applied(), resident_kib(worker.pid)))
    finally:
        worker.kill()
        worker.wait(10)
    (t0, n0, _), (t1, n1, _) = samples[1], samples[-1]
    rate = (n1 - n0) / (t1 - t0)
    rss = [kib for _, _, kib in samples]
    print(f"applied {rate:.0f}/s with a limit of {LIMIT}/s; resident KiB {rss}")
    assert LIMIT * 0.7 <= rate <= LIMIT * 1.3
    assert n1 < BACKLOG  # the rest still waits in Kafka
    assert max(rss) - min(rss) < 16 * 1024
