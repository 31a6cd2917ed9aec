"""Ordering and exactly-once effect through a rebalance and through a broker restart. There
is no pitfall run here: each test reports what the protected run saw happen."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from uuid import uuid4

from aiokafka import AIOKafkaProducer

from infra import components
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import new_envelope
from shared.testing.infra import end_offsets, eventually, kafka_bootstrap, read_records, unique
from shared.testing.worker import WorkerSettings, consume
from tests.faults.conftest import Side, Workers
from tests.faults.test_delivery_faults import reasons_of
from tests.faults.what_happened import Report, tally


def per_key(reasons: list[str]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for reason in reasons:
        key, number = reason.rsplit(":", 1)
        seen[key].append(int(number))
    return dict(seen)


async def test_a_consumer_joining_and_one_leaving_mid_stream_still_apply_each_event_once_in_order(
    consumer_side: Side, report: Report
) -> None:
    settings = WorkerSettings(
        service_name=consumer_side.name,
        database_url=consumer_side.url,
        kafka_bootstrap_servers=kafka_bootstrap(),
        otel_sdk_disabled=True,
    )
    keys = [unique("k") for _ in range(12)]
    order_ids = {key: uuid4() for key in keys}
    rounds = 10
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
    await producer.start()
    first = asyncio.create_task(consume(settings))
    second: asyncio.Task[None] | None = None
    try:
        for n in range(1, rounds + 1):
            if n == 4:
                second = asyncio.create_task(consume(settings))  # joins: rebalance
            if n == 8:
                first.cancel()  # leaves: rebalance again
                with contextlib.suppress(asyncio.CancelledError):
                    await first
            for key in keys:
                envelope = new_envelope(
                    OrderRejected(order_id=order_ids[key], reason=f"{key}:{n}"),
                    source="order",
                    aggregate_id=key,
                    sequence=n,
                    correlation_id="c",
                    causation_id=None,
                )
                await producer.send_and_wait("orders", envelope.to_bytes(), key=key.encode())
            await asyncio.sleep(0.7)
        total = len(keys) * rounds
        await eventually(consumer_side.applied, lambda rows: len(rows) >= total, timeout=60)
        await asyncio.sleep(2.0)
        applied = await consumer_side.applied()
    finally:
        await producer.stop()
        for task in (first, second):
            if task is not None:
                task.cancel()
        await asyncio.gather(first, *([second] if second else []), return_exceptions=True)
    in_order = [key for key, numbers in per_key(applied).items() if numbers == sorted(numbers)]
    report(
        f"ordering: {len(keys)} aggregates while a consumer joins and another leaves",
        {},
        f"{len(applied)} rows for {len(keys) * rounds} events, {tally(applied)};"
        f" {len(in_order)} of {len(keys)} aggregates applied in order",
    )
    assert len(applied) == len(keys) * rounds
    assert per_key(applied) == {key: list(range(1, rounds + 1)) for key in keys}


async def test_a_broker_restart_while_publishing_loses_nothing_and_reorders_nothing(
    producer_side: Side, workers: Workers, report: Report
) -> None:
    keys = [unique("k") for _ in range(3)]
    count = 60
    since = await end_offsets("orders")
    workers.start(producer_side, "relay")
    writers = [
        workers.start(producer_side, "write", str(count), key, WRITE_INTERVAL_SECONDS="0.1")
        for key in keys
    ]
    await asyncio.sleep(2.0)
    await asyncio.to_thread(components.restart, "kafka")  # mid-stream
    for writer in writers:
        assert await asyncio.to_thread(writer.wait, 60) == 0
    await eventually(lambda: producer_side.count("outbox"), lambda n: n == 0, timeout=60)

    records = await read_records(
        "orders",
        since,
        lambda rs: all(len(set(reasons_of(rs, k))) == count for k in keys),
        timeout=30,
    )
    reached: dict[str, int] = {}  # per key: how far its events came in order
    for key in keys:
        numbers = [int(r.rsplit(":", 1)[1]) for r in reasons_of(records, key)]
        # What a consumer applies: a number above the next expected would be a reordering.
        expected = 1
        for number in numbers:
            if number > expected:
                break
            if number == expected:
                expected += 1
        reached[key] = expected - 1
    on_kafka = sum(len(reasons_of(records, key)) for key in keys)
    report(
        f"ordering: {len(keys)} writers while Kafka restarts",
        {},
        f"{on_kafka} records on Kafka for {len(keys) * count} events;"
        f" {sum(n == count for n in reached.values())} of {len(keys)} aggregates"
        f" in order through their last event",
    )
    for key in keys:
        assert reached[key] == count, f"{key}: in order only up to {reached[key]} of {count}"
