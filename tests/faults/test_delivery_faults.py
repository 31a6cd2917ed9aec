"""Each delivery guarantee under the fault that threatens it, with the protection on (the
invariant holds) and with it switched off by its pitfall mode (the invariant breaks). Each
run reports what it saw happen (``report``), for the session's "what happened" section.

Real PostgreSQL and Kafka; relays, consumers and writers run as processes that SIGKILL
themselves at a failpoint (see ``shared.faults``), or publish without keys
(``PITFALL_UNKEYED``)."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from aiokafka import ConsumerRecord

from shared.testing.infra import end_offsets, eventually, read_records, records_keyed, unique
from tests.faults.conftest import Side, Workers
from tests.faults.what_happened import Report, count, order_of, tally

KILLED = -signal.SIGKILL
PROTECTIONS_OFF = {"PITFALL_NO_DEDUP": "true", "PITFALL_NO_SEQUENCE_CHECK": "true"}
UNKEYED = {"PITFALL_UNKEYED": "true"}


def reasons_of(records: list[ConsumerRecord], key: str) -> list[str]:
    return [
        json.loads(r.value)["payload"]["reason"]
        for r in records
        if r.key is not None and r.key.decode() == key
    ]


def of_aggregate(records: list[ConsumerRecord], aggregate_id: str) -> list[ConsumerRecord]:
    """The records whose envelope is of ``aggregate_id``, keyed or not."""
    found = []
    for record in records:
        try:
            envelope = json.loads(record.value)
        except (TypeError, ValueError):
            continue
        if isinstance(envelope, dict) and envelope.get("aggregate_id") == aggregate_id:
            found.append(record)
    return found


async def published(key: str, since: dict, expected: int) -> list[str]:  # type: ignore[type-arg]
    records = await read_records(
        "orders",
        since,
        lambda rs: len(reasons_of(rs, key)) >= expected,
    )
    return reasons_of(records, key)


async def drain_outbox(side: Side, workers: Workers, **env: str) -> None:
    relay = workers.start(side, "relay", **env)
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
    producer_side: Side, consumer_side: Side, workers: Workers, report: Report, protected: bool
) -> None:
    key = unique("agg")
    since = await end_offsets("orders")
    assert workers.run(producer_side, "write", "5", key) == 0
    assert workers.run(producer_side, "relay", FAILPOINTS="relay.after_publish") == KILLED
    assert await producer_side.count("outbox") == 5  # published, but never marked
    await drain_outbox(producer_side, workers)
    expected = [f"{key}:{i}" for i in range(1, 6)]
    on_kafka = await published(key, since, 10)

    env = {} if protected else PROTECTIONS_OFF
    workers.start(consumer_side, "consumer", **env)
    applied = await settle(consumer_side, 5)
    report(
        "duplicates: a relay killed between the broker's ack and the outbox delete",
        env,
        f"{count(len(set(on_kafka)), 'event')} on Kafka {tally(on_kafka)};"
        f" the consumer applied them {tally(applied)} ({count(len(applied), 'row')})",
    )
    assert on_kafka == expected + expected  # the batch went twice
    if protected:
        assert applied == expected
    else:
        assert applied == expected + expected  # every event took effect twice


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_consumer_killed_between_its_db_commit_and_offset_commit_applies_once(
    producer_side: Side, consumer_side: Side, workers: Workers, report: Report, protected: bool
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
    report(
        "duplicates: a consumer killed between its database commit and its offset commit",
        env,
        f"{len(first)} of 3 events committed before the kill; after the restart the"
        f" consumer applied them {tally(applied)} ({count(len(applied), 'row')})",
    )
    if protected:
        assert applied == expected
    else:
        assert applied == first + expected  # every redelivered record applied again


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_writer_killed_right_after_its_commit_loses_the_event_only_without_outbox(
    producer_side: Side, workers: Workers, report: Report, protected: bool
) -> None:
    key = unique("agg")
    since = await end_offsets("orders")
    env = {} if protected else {"PITFALL_NAIVE_DUAL_WRITE": "true"}
    assert workers.run(producer_side, "write", "1", key, FAILPOINTS="uow.after_commit", **env) == (
        KILLED
    )
    committed = await producer_side.applied()
    outbox = await producer_side.count("outbox")
    if protected:
        await drain_outbox(producer_side, workers)
        on_kafka = await published(key, since, 1)
        where = "after the relay ran"
    else:  # no relay to run: what the writer did not publish before it died is lost
        envelopes = await records_keyed("orders", key, since, settle=0, timeout=3)
        on_kafka = [e["payload"]["reason"] for e in envelopes]
        where = "within 3 s"
    report(
        "dual write: a writer killed right after its business commit",
        env,
        f"{count(len(committed), 'change')} committed with {count(outbox, 'outbox row')};"
        f" {count(len(on_kafka), 'event')} on Kafka {where}",
    )
    assert committed == ["w1"]  # the business change committed
    if protected:
        assert outbox == 1
        assert on_kafka == [f"{key}:1"]
    else:
        assert outbox == 0
        assert on_kafka == []  # the dual write's second half never happened


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_consumer_killed_before_its_db_commit_loses_nothing_unless_it_auto_commits(
    producer_side: Side, consumer_side: Side, workers: Workers, report: Report, protected: bool
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
    before = await consumer_side.applied()

    workers.start(consumer_side, "consumer", **env)
    # A later event, once applied, shows the restarted consumer is back at work (it rejoins
    # the group only when the killed member's session has expired).
    later = unique("later")
    assert workers.run(producer_side, "write", "1", later) == 0
    await drain_outbox(producer_side, workers)
    await eventually(consumer_side.applied, lambda rows: f"{later}:1" in rows, timeout=45)
    applied = [r for r in await settle(consumer_side, 1) if r.startswith(f"{key}:")]
    report(
        "offsets: a consumer killed before its database commit, 2 s after fetching",
        env,
        f"{len(before)} of 2 events applied before the kill, {len(applied)} of 2 once the "
        "restarted consumer applied a later event",
    )
    assert before == []
    if protected:
        assert applied == [f"{key}:1", f"{key}:2"]
    else:
        assert applied == []  # both offsets were committed: lost


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_one_aggregate_s_unkeyed_events_are_applied_in_order_only_with_the_sequence_check(
    producer_side: Side, consumer_side: Side, workers: Workers, report: Report, protected: bool
) -> None:
    key, events = unique("agg"), 24
    since = await end_offsets("orders")
    assert workers.run(producer_side, "write", str(events), key) == 0
    await drain_outbox(producer_side, workers, **UNKEYED)
    records = await read_records(
        "orders", since, lambda rs: len(of_aggregate(rs, key)) >= events, timeout=30
    )
    mine = of_aggregate(records, key)
    partitions = {r.partition for r in mine}

    env = {} if protected else {"PITFALL_NO_SEQUENCE_CHECK": "true"}
    workers.start(consumer_side, "consumer", **env)
    applied = [int(reason.rsplit(":", 1)[1]) for reason in await settle(consumer_side, events)]
    consumed = consumer_side.consumed(key)
    parked = [sequence for sequence, outcome in consumed if outcome == "parked"]
    report(
        "ordering: one aggregate's events published without a key",
        {**UNKEYED, **env},
        f"{count(len(mine), 'event')} on {len(partitions)} of {len(since)} partitions;"
        f" the consumer received them {order_of([s for s, _ in consumed])},"
        f" parked {len(parked)}, and applied them {order_of(applied)}",
    )
    assert all(r.key is None for r in mine)
    assert len(partitions) > 1, "one partition took every event: nothing to reorder"
    assert sorted(applied) == list(range(1, events + 1))  # each once: dedup is on
    if protected:
        assert parked, "no event arrived ahead of a gap"
        assert applied == sorted(applied)  # parked, then applied once the gap filled
    else:
        assert applied != sorted(applied)  # applied as they came
