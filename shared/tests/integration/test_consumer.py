"""The Kafka consumer runner against real Kafka and PostgreSQL: duplicates, reordering,
poison messages, offsets, and the pitfall modes that switch the protections off."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from infra import components
from shared.consuming.consumer import ConsumerRunner
from shared.consuming.deadletter import STUB_VALUE_BYTES, DeadLetterSink
from shared.consuming.processing import Dedup, EventProcessor, SequenceCheck
from shared.contracts.catalog import OrderCancelled, OrderRejected
from shared.contracts.envelope import Envelope, new_envelope
from shared.kafka import Producer
from shared.persistence.postgres import PostgresUnitOfWork
from shared.pitfalls.no_dedup import NoDedup
from shared.pitfalls.no_sequence_check import NoSequenceCheck
from shared.service.settings import ServiceSettings
from shared.testing.infra import (
    create_topics,
    end_offsets,
    eventually,
    kafka_bootstrap,
    read_records,
    start_group_at_end,
    unique,
)
from shared.testing.worker import APPLIED_TABLE, router


def stream(aggregate_id: str, n: int) -> list[Envelope]:
    return [
        new_envelope(
            OrderRejected(order_id=uuid4(), reason=f"r{i}"),
            source="order",
            aggregate_id=aggregate_id,
            sequence=i,
            correlation_id=unique("corr"),
            causation_id=None,
        )
        for i in range(1, n + 1)
    ]


def ignored_first(aggregate_id: str) -> Envelope:
    """The first event of a stream, of a type the test router has no handler for."""
    return new_envelope(
        OrderCancelled(order_id=uuid4(), reason="x"), source="order", aggregate_id=aggregate_id,
        sequence=1, correlation_id=unique("corr"), causation_id=None,
    )  # fmt: skip


async def send_as_relayed(producer: AIOKafkaProducer, envelope: Envelope) -> None:
    """With the headers the relay sends (``event_type`` among them)."""
    headers = [(k, v.encode()) for k, v in envelope.kafka_headers().items()]
    await producer.send_and_wait(
        "orders", envelope.to_bytes(), key=envelope.aggregate_id.encode(), headers=headers
    )


async def produce(key: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait("orders", value, key=key.encode())
    finally:
        await producer.stop()


async def applied(pool: asyncpg.Pool) -> list[str]:
    return [r["reason"] for r in await pool.fetch("SELECT reason FROM applied ORDER BY id")]


Protections = tuple[Dedup, SequenceCheck]


class CountingUnitOfWork(PostgresUnitOfWork):
    commits = 0

    async def _commit(self) -> None:
        await super()._commit()
        CountingUnitOfWork.commits += 1


@contextlib.asynccontextmanager
async def consuming(
    pool: asyncpg.Pool,
    settings: ServiceSettings,
    protections: Protections = (Dedup(), SequenceCheck()),
) -> AsyncIterator[None]:
    """A consumer runner for ``orders`` in its own group, started at the topic's end."""
    await pool.execute(APPLIED_TABLE)
    await create_topics(settings.dlq_topic)
    await start_group_at_end(settings.consumer_group, ["orders"])
    producer = Producer(settings)
    processor = EventProcessor(
        router,
        lambda: CountingUnitOfWork(pool, settings.service_name),
        dedup=protections[0],
        sequence_check=protections[1],
    )
    runner = ConsumerRunner(
        settings, processor, router.topics, DeadLetterSink(pool, producer, settings.service_name)
    )
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: asyncio.sleep(0, runner.running), bool)
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.close()


@pytest.fixture
async def running(
    request: pytest.FixtureRequest, pool: asyncpg.Pool, settings: ServiceSettings
) -> AsyncIterator[ServiceSettings]:
    async with consuming(pool, settings, getattr(request, "param", (Dedup(), SequenceCheck()))):
        yield settings


async def test_duplicates_and_reordering_are_applied_exactly_once_in_order(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    e1, e2, e3 = stream(key, 3)
    await produce(key, [e1.to_bytes(), e1.to_bytes(), e3.to_bytes(), e2.to_bytes(), e3.to_bytes()])
    await eventually(lambda: applied(pool), lambda rows: len(rows) >= 3)
    await asyncio.sleep(1.0)  # anything wrongly applied twice would show up by now
    assert await applied(pool) == ["r1", "r2", "r3"]
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0


@pytest.mark.parametrize("running", [(NoDedup(), NoSequenceCheck())], indirect=True, ids=["off"])
async def test_with_dedup_and_sequence_check_off_a_duplicate_is_applied_twice(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    e1, e2 = stream(key, 2)
    await produce(key, [e2.to_bytes(), e1.to_bytes(), e1.to_bytes()])
    rows = await eventually(lambda: applied(pool), lambda rows: len(rows) >= 3)
    assert rows == ["r2", "r1", "r1"]  # out of order and twice: the pitfalls shown


async def test_a_poison_message_is_dead_lettered_and_its_partition_keeps_flowing(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    e1, e2 = stream(key, 2)
    wrong_envelope = json.dumps({"event_type": "OrderRejected", "payload": {}}).encode()
    # v7, from a producer ahead of us, that does not read as the v1 this consumer knows
    bad_version = e2.model_copy(
        update={"schema_version": 7, "event_id": uuid4(), "payload": {"order_id": key}}
    )
    bad_payload = e2.model_copy(update={"event_id": uuid4(), "payload": {"reason": "r"}})
    dlq_since = await end_offsets(running.dlq_topic)
    poison = [b"{not json", wrong_envelope, bad_version.to_bytes(), bad_payload.to_bytes()]
    await produce(key, [*poison, e1.to_bytes(), e2.to_bytes()])
    await eventually(lambda: applied(pool), lambda rows: rows == ["r1", "r2"])

    letters = await pool.fetch('SELECT * FROM dead_letters ORDER BY "offset"')
    assert [row["attempts"] for row in letters] == [1, 1, 1, 1]
    assert "Invalid JSON" in letters[0]["error"]
    assert "not a valid envelope" in letters[1]["error"]
    assert "event_id" in letters[1]["error"]
    assert "OrderRejected v7 is newer than v1 and does not read as it" in letters[2]["error"]
    assert "OrderRejected v1" in letters[3]["error"]
    assert "order_id" in letters[3]["error"]

    records = await read_records(running.dlq_topic, dlq_since, lambda rs: len(rs) >= 4)
    headers = {k: v.decode() for k, v in records[0].headers}  # type: ignore[attr-defined]
    assert records[0].key.decode() == key  # type: ignore[attr-defined]
    assert records[0].value == b"{not json"  # type: ignore[attr-defined]
    assert headers["dlq.original_topic"] == "orders"
    assert headers["dlq.consumer"] == running.service_name
    assert int(headers["dlq.original_offset"]) == letters[0]["offset"]
    assert headers["dlq.attempts"] == "1"
    assert "not a valid envelope" in headers["dlq.error"]


async def test_offsets_are_committed_once_the_work_is_done(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    await produce(key, [e.to_bytes() for e in stream(key, 3)])
    await eventually(lambda: applied(pool), lambda rows: len(rows) == 3)
    ends = await end_offsets("orders")

    async def committed() -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap(), group_id=running.consumer_group
        )
        await consumer.start()
        try:
            return {tp: await consumer.committed(tp) or 0 for tp in ends}
        finally:
            await consumer.stop()

    await eventually(committed, lambda offsets: offsets == ends, timeout=15)


async def test_a_database_outage_makes_the_consumer_wait_instead_of_dead_lettering(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    (e1,) = stream(key, 1)
    components.stop("postgres")
    try:
        await produce(key, [e1.to_bytes()])
        await asyncio.sleep(4)  # several "attempts" worth of backoff while the database is away
    finally:
        components.start("postgres")
    await eventually(lambda: applied(pool), lambda rows: rows == ["r1"], timeout=60)
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_a_record_too_large_to_dead_letter_whole_is_kept_and_its_partition_keeps_flowing(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    """The record fits the producer's 1 MiB ``max_request_size``; with the ``dlq.*`` headers
    it does not, a non-retriable error: the letter is kept whole in the table, a stub goes to
    the dead-letter topic, and the next event of the partition is applied."""
    key = unique("order")
    (e1,) = stream(key, 1)
    room = (
        1024 * 1024 - 100 - DefaultRecordBatchBuilder.estimate_size_in_bytes(key.encode(), b"", [])
    )
    huge = b"x" * room  # not an envelope: dead-lettered at once
    dlq_since = await end_offsets(running.dlq_topic)
    await produce(key, [huge, e1.to_bytes()])
    await eventually(lambda: applied(pool), lambda rows: rows == ["r1"])

    (letter,) = await pool.fetch("SELECT * FROM dead_letters")
    assert bytes(letter["value"]) == huge
    assert letter["on_topic"] == "stub"
    (record,) = await read_records(running.dlq_topic, dlq_since, lambda rs: len(rs) >= 1)
    headers = {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]
    assert record.value == huge[:STUB_VALUE_BYTES]  # type: ignore[attr-defined]
    assert "MessageSizeTooLargeError" in headers["dlq.truncated"]
    assert headers["dlq.letter_id"] == str(letter["letter_id"])


@pytest.mark.parametrize("linger", [0.5, 0.0])
async def test_ignored_records_wait_for_a_handled_one_and_ride_in_its_transaction(
    linger: float, pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    """With the linger, the ignored record is applied in the handled one's transaction: one
    commit for both. With it off (0), each has its own."""
    settings = settings.model_copy(update={"consumer_ignored_linger_seconds": linger})
    key = unique("order")
    ignored = ignored_first(key)
    handled = stream(key, 2)[1]
    async with consuming(pool, settings):
        CountingUnitOfWork.commits = 0
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), enable_idempotence=True)
        await producer.start()
        try:
            for envelope in (ignored, handled):
                await send_as_relayed(producer, envelope)
                await asyncio.sleep(0.3 if linger == 0 else 0.05)
        finally:
            await producer.stop()
        await eventually(lambda: applied(pool), lambda rows: rows == ["r2"])
    assert CountingUnitOfWork.commits == (1 if linger else 2)


async def test_an_ignored_record_with_nothing_behind_it_moves_its_stream_on_after_the_linger(
    running: ServiceSettings, pool: asyncpg.Pool
) -> None:
    key = unique("order")
    ignored = ignored_first(key)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap())
    await producer.start()
    try:
        headers = [(k, v.encode()) for k, v in ignored.kafka_headers().items()]
        await producer.send_and_wait(
            "orders", ignored.to_bytes(), key=key.encode(), headers=headers
        )
    finally:
        await producer.stop()
    position = "SELECT last_sequence FROM consumer_sequences WHERE aggregate_id = $1"
    await eventually(lambda: pool.fetchval(position, key), lambda last: last == 1, timeout=5)
