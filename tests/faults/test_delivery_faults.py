"""Each delivery guarantee under the fault that threatens it, with the protection on (the
invariant holds) and with it switched off by its pitfall mode (the invariant breaks).

Real PostgreSQL and Kafka; relays, consumers and writers run as processes that SIGKILL
themselves at a failpoint (see ``shared.faults``)."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from aiokafka import ConsumerRecord

from shared.testing.infra import end_offsets, eventually, read_records, unique
from tests.faults.conftest import Side, Workers

KILLED = -signal.SIGKILL
PROTECTIONS_OFF = {"PITFALL_NO_DEDUP": "true", "PITFALL_NO_SEQUENCE_CHECK": "true"}


def reasons_of(records: list[ConsumerRecord], key: str) -> list[str]:
    return [json.loads(r.value)["payload"]["reason"] for r in records if r.key.decode() == key]


async def published(key: str, since: dict, expected: int) -> list[str]:  # type: ignore[type-arg]
    records = await read_records(
        "orders",
        since,
        lambda rs: len(reasons_of(rs, key)) >= expected,
    )
    return reasons_of(records, key)


async def drain_outbox(side: Side, workers: Workers) -> None:
    relay = workers.start(side, "relay")
    await eventually(lambda: side.count("outbox"), lambda n: n == 0, timeout=30)
    relay.terminate()


async def settle(side: Side, expected: int) -> list[str]:
    """What the consumer applied, once it reached ``expected`` rows and then stayed quiet
    long enough for a wrongly repeated delivery to show up."""
    await eventually(side.applied, lambda rows: len(rows) >= expected, timeout=45)
    await asyncio.sleep(2.0)
    return await side.applied()


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_relay_killed_between_publish_and_delete_duplicates_on_kafka_but_not_in_effect(
    producer_side: Side, consumer_side: Side, workers: Workers, protected: bool
) -> None:
    key = unique("agg")
    since = await end_offsets("orders")
    assert workers.run(producer_side, "write", "5", key) == 0
    assert workers.run(producer_side, "relay", FAILPOINTS="relay.after_publish") == KILLED
    assert await producer_side.count("outbox") == 5  # published, but never marked
    await drain_outbox(producer_side, workers)
    expected = [f"{key}:{i}" for i in range(1, 6)]
    assert await published(key, since, 10) == expected + expected  # the batch went twice

    workers.start(consumer_side, "consumer", **({} if protected else PROTECTIONS_OFF))
    applied = await settle(consumer_side, 5)
    if protected:
        assert applied == expected
    else:
        assert applied == expected + expected  # every event took effect twice


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_consumer_killed_between_its_db_commit_and_offset_commit_applies_once(
    producer_side: Side, consumer_side: Side, workers: Workers, protected: bool
) -> None:
    key = unique("agg")
    assert workers.run(producer_side, "write", "3", key) == 0
    await drain_outbox(producer_side, workers)
    env = {} if protected else PROTECTIONS_OFF
    died = workers.run(consumer_side, "consumer", FAILPOINTS="consumer.after_db_commit", **env)
    assert died == KILLED
    expected = [f"{key}:1", f"{key}:2", f"{key}:3"]
    # Committed (the first record, or the whole first batch), its offsets not.
    first = await consumer_side.applied()
    assert first, "nothing was applied before the kill"
    assert first == expected[: len(first)]

    workers.start(consumer_side, "consumer", **env)
    applied = await settle(consumer_side, 3 if protected else len(first) + 3)
    if protected:
        assert applied == expected
    else:
        assert applied == first + expected  # every redelivered record applied again


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_writer_killed_right_after_its_commit_loses_the_event_only_without_outbox(
    producer_side: Side, workers: Workers, protected: bool
) -> None:
    key = unique("agg")
    since = await end_offsets("orders")
    env = {} if protected else {"PITFALL_NAIVE_DUAL_WRITE": "true"}
    assert workers.run(producer_side, "write", "1", key, FAILPOINTS="uow.after_commit", **env) == (
        KILLED
    )
    assert await producer_side.applied() == ["w1"]  # the business change committed
    if protected:
        assert await producer_side.count("outbox") == 1
        await drain_outbox(producer_side, workers)
        assert await published(key, since, 1) == [f"{key}:1"]
    else:
        assert await producer_side.count("outbox") == 0
        with pytest.raises(TimeoutError):  # the dual write's second half never happened
            await read_records(
                "orders",
                since,
                lambda rs: bool(reasons_of(rs, key)),
                timeout=3,
            )


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_consumer_killed_before_its_db_commit_loses_nothing_unless_it_auto_commits(
    producer_side: Side, consumer_side: Side, workers: Workers, protected: bool
) -> None:
    key = unique("agg")
    assert workers.run(producer_side, "write", "2", key) == 0
    await drain_outbox(producer_side, workers)
    env = {} if protected else {"PITFALL_AUTO_COMMIT": "true"}
    died = workers.run(
        consumer_side,
        "consumer",
        FAILPOINTS="consumer.before_db_commit",
        FAILPOINT_DELAY_SECONDS="2",  # long enough for an auto-commit to fire
        **env,
    )
    assert died == KILLED
    assert await consumer_side.applied() == []

    workers.start(consumer_side, "consumer", **env)
    if protected:
        assert await settle(consumer_side, 2) == [f"{key}:1", f"{key}:2"]
    else:
        await asyncio.sleep(5)
        assert await consumer_side.applied() == []  # both offsets were committed: lost
