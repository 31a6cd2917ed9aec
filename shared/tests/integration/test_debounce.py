"""Debounce at the source against real PostgreSQL and Kafka: a burst of edits crosses Kafka
as one event with the final value; durably (a SIGKILL loses nothing) and once (two emitters
never emit one event twice)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import asyncpg

from shared.kafka import Producer
from shared.pitfalls.naive_dual_write import publishing_after_commit
from shared.pitfalls.no_debounce import published_at_once
from shared.service.settings import ServiceSettings
from shared.testing.infra import end_offsets, eventually, kafka_bootstrap, records_keyed
from shared.testing.worker import edit_address
from shared.writing.debounce import DebounceEmitter
from shared.writing.outbox import OutgoingMessage
from shared.writing.relay import OutboxRelay

LOGS = Path(__file__).resolve().parents[3] / ".state" / "logs" / "debounce"


@contextlib.asynccontextmanager
async def emitting_and_relaying(
    pool: asyncpg.Pool, settings: ServiceSettings, *, quiet: float, max_wait: float = 30.0
) -> AsyncIterator[DebounceEmitter]:
    producer = Producer(settings)
    relay = OutboxRelay(settings, pool, producer)
    emitter = DebounceEmitter(
        pool,
        settings.service_name,
        quiet_seconds=quiet,
        max_wait_seconds=max_wait,
        poll_seconds=0.1,
        emitted=relay.wake,
    )
    tasks = [asyncio.create_task(emitter.run()), asyncio.create_task(relay.run())]
    try:
        yield emitter
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.close()


def final_line1(envelope: dict[str, Any]) -> str:
    line1: str = envelope["payload"]["shipping_address"]["line1"]
    return line1


async def test_a_burst_of_1000_edits_crosses_kafka_as_one_event_with_the_final_address(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    order_id = uuid4()
    since = await end_offsets("orders")
    async with emitting_and_relaying(pool, settings, quiet=1.0):
        await edit_address(pool, settings.service_name, order_id, 1000)
        envelopes = await records_keyed("orders", str(order_id), since, settle=2.0)
    assert [(e["event_type"], e["sequence"]) for e in envelopes] == [
        ("OrderShippingAddressChanged", 1)
    ]
    assert final_line1(envelopes[0]) == "street 1000"
    assert envelopes[0]["correlation_id"] == f"burst:{order_id}"
    assert await pool.fetchval("SELECT count(*) FROM debounced_events") == 0


async def test_without_debounce_the_same_burst_crosses_kafka_as_1000_events(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """The pitfall mode PITFALL_NO_DEBOUNCE: the storm the debounce prevents."""
    order_id = uuid4()
    since = await end_offsets("orders")
    async with emitting_and_relaying(pool, settings, quiet=1.0):
        await edit_address(pool, settings.service_name, order_id, 1000, coarse=published_at_once)
        envelopes = await records_keyed("orders", str(order_id), since, settle=2.0)
    assert [e["sequence"] for e in envelopes] == list(range(1, 1001))
    assert final_line1(envelopes[-1]) == "street 1000"


async def test_a_burst_that_never_ends_still_emits_after_the_maximum_wait(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    order_id = uuid4()
    emitter = DebounceEmitter(
        pool, settings.service_name, quiet_seconds=1.0, max_wait_seconds=1.5, poll_seconds=0.1
    )
    emitted_during_burst = 0
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # an edit every 0.1 s: never quiet for 1 s
        await edit_address(pool, settings.service_name, order_id, 1)
        emitted_during_burst += await emitter.emit_due()
        await asyncio.sleep(0.1)
    assert emitted_during_burst >= 1


class PoolSpy:
    """The pool, noting how the emitter uses it: ``fetchval`` is one statement outside a
    transaction, ``acquire`` a transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.calls: list[str] = []

    async def fetchval(self, *args: Any) -> Any:
        self.calls.append("fetchval")
        return await self._pool.fetchval(*args)

    def acquire(self) -> Any:
        self.calls.append("acquire")
        return self._pool.acquire()


async def test_a_poll_with_nothing_due_costs_one_statement_and_no_transaction(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    spy = PoolSpy(pool)
    emitter = DebounceEmitter(
        cast(asyncpg.Pool, spy),
        settings.service_name,
        quiet_seconds=0.0,
        max_wait_seconds=30.0,
        poll_seconds=0.1,
    )
    await emitter.emit_due()  # whatever earlier tests left
    spy.calls.clear()

    assert await emitter.emit_due() == 0
    assert spy.calls == ["fetchval"]

    await edit_address(pool, settings.service_name, uuid4(), 1)
    assert await emitter.emit_due() == 1
    assert spy.calls == ["fetchval", "fetchval", "acquire"]


async def test_two_emitters_never_emit_one_event_twice(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    orders = [uuid4() for _ in range(300)]
    for order_id in orders:
        await edit_address(pool, settings.service_name, order_id, 2)
    await asyncio.sleep(0.1)
    emitters = [
        DebounceEmitter(
            pool,
            settings.service_name,
            quiet_seconds=0.05,
            max_wait_seconds=5.0,
            poll_seconds=0.1,
            batch_size=7,
        )
        for _ in range(2)
    ]

    async def drain(emitter: DebounceEmitter) -> int:
        total = 0
        while emitted := await emitter.emit_due():
            total += emitted
        return total

    first, second = await asyncio.gather(*(drain(e) for e in emitters))
    assert first + second == len(orders)
    assert first > 0  # both took part
    assert second > 0
    rows = await pool.fetch("SELECT message_key, count(*) AS n FROM outbox GROUP BY message_key")
    assert {r["message_key"]: r["n"] for r in rows} == {str(o): 1 for o in orders}


def start_burst(settings: ServiceSettings, count: int, order_id: UUID) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "shared.testing.worker", "burst", str(count), str(order_id)],
        env={
            **os.environ,
            "SERVICE_NAME": settings.service_name,
            "DATABASE_URL": settings.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap(),
            "OTEL_SDK_DISABLED": "true",
            "RELAY_POLL_INTERVAL_SECONDS": "0.2",
            "DEBOUNCE_QUIET_SECONDS": "3.0",
        },
        stdout=subprocess.PIPE,
        stderr=(LOGS / f"{settings.service_name}.log").open("ab"),
    )


async def test_a_sigkill_during_the_quiet_period_loses_nothing_and_emits_once_after_restart(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    order_id = uuid4()
    since = await end_offsets("orders")
    first = start_burst(settings, 50, order_id)
    try:
        assert first.stdout is not None
        line = await asyncio.to_thread(first.stdout.readline)
        assert line.strip() == b"held 50"
        first.send_signal(signal.SIGKILL)  # well inside the 3 s quiet period
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    assert await pool.fetchval("SELECT changes FROM debounced_events") == 50
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0  # nothing went out yet

    restarted = start_burst(settings, 0, order_id)
    try:
        envelopes = await records_keyed("orders", str(order_id), since, settle=4.0)
    finally:
        restarted.kill()
        restarted.wait(10)
    assert [(e["event_type"], e["sequence"]) for e in envelopes] == [
        ("OrderShippingAddressChanged", 1)
    ]
    assert final_line1(envelopes[0]) == "street 50"
    await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM debounced_events"), lambda n: n == 0
    )


async def test_in_the_naive_dual_write_mode_the_emitter_publishes_itself(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """No relay runs in that pitfall mode: an emitter that only wrote the outbox would hold
    every debounced event back for good."""
    order_id = uuid4()
    published: list[OutgoingMessage] = []

    async def publish(messages: Sequence[OutgoingMessage]) -> None:
        published.extend(messages)

    await edit_address(pool, settings.service_name, order_id, 3)
    emitter = DebounceEmitter(
        pool,
        settings.service_name,
        quiet_seconds=0.0,
        max_wait_seconds=5.0,
        poll_seconds=0.1,
        new_outbox=publishing_after_commit(publish),
    )
    assert await emitter.emit_due() == 1
    assert [(m.key, m.headers["event_type"]) for m in published] == [
        (str(order_id), "OrderShippingAddressChanged")
    ]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await pool.fetchval("SELECT count(*) FROM debounced_events") == 0
