"""Throwaway databases and Kafka topics on the real servers that ``make test`` starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.persistence.db import migrate
from shared.persistence.machinery_migrations import STEPS

T = TypeVar("T")


def postgres_url(database: str = "postgres") -> str:
    port = os.environ.get("POSTGRES_PORT", "5432")
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def kafka_bootstrap() -> str:
    """The cluster's bootstrap list: ``KAFKA_BOOTSTRAP_SERVERS``, else node 1 (``KAFKA_PORT``),
    from which a client learns every other node."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    return given or f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid4().hex[:10]}"


async def create_database(migrations: Path | None = None) -> str:
    """A new database with a service's migrations applied, or, with ``migrations=None``, only
    the machinery tables: every machinery step applied in order, as a service at head has."""
    name = unique("test")
    admin = await asyncpg.connect(postgres_url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = postgres_url(name)
    if migrations is not None:
        await asyncio.to_thread(migrate, migrations, url)
    else:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                for step in STEPS:
                    await conn.execute(step.upgrade)
        finally:
            await conn.close()
    return url


@contextlib.asynccontextmanager
async def migrated_pool(migrations: Path, max_size: int = 4) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a new database with ``migrations`` applied, dropped afterwards."""
    url = await create_database(migrations)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()
        await drop_database(url)


async def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def create_topics(*names: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def partitions_of(topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code"):
        raise LookupError(f"topic {topic} does not exist")
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def end_offsets(topic: str) -> dict[TopicPartition, int]:
    partitions = await partitions_of(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap())
    await consumer.start()
    try:
        result: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return result
    finally:
        await consumer.stop()


async def start_group_at_end(group: str, topics: list[str]) -> None:
    """Commit the group's offsets at the topics' current ends, so a consumer in a test sees
    only what the test produces, not the history other tests left behind."""
    offsets: dict[TopicPartition, int] = {}
    for topic in topics:
        offsets.update(await end_offsets(topic))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def read_records(
    topic: str,
    since: dict[TopicPartition, int],
    until: Callable[[list[object]], bool],
    timeout: float = 20.0,
) -> list[object]:
    """Records of ``topic`` from the given offsets until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(), enable_auto_commit=False)
    await consumer.start()
    records: list[object] = []
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while not until(records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(records)} records read from {topic}, condition unmet")
            batch = await consumer.getmany(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
        return records
    finally:
        await consumer.stop()


async def records_keyed(
    topic: str,
    key: str,
    since: dict[TopicPartition, int],
    *,
    settle: float,
    done: Callable[[list[dict[str, Any]]], bool] = bool,
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """The envelopes (as JSON) keyed ``key`` on ``topic`` from the given offsets, read until
    ``done(found)`` holds (by default: one was found) and nothing more came for ``settle``
    seconds; so a test sees one event and also that no second one follows."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(), enable_auto_commit=False)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    if record.key == key.encode():
                        found.append(json.loads(record.value))
                        last = time.monotonic()
            if done(found) and time.monotonic() - last > settle:
                break
        return found
    finally:
        await consumer.stop()


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout: float = 30.0,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until ``accept`` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)
