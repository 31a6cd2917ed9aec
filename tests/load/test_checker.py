"""The checker's judgement on synthetic facts: a consistent run passes every check, and each
broken invariant fails its own check, naming the offender. Plus gather() read back from real
(throwaway) databases and topics."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from inventory.bootstrap import MIGRATIONS as INVENTORY_MIGRATIONS
from load.checker import (
    ADDRESS_CHANGED,
    ADDRESS_SETTLED,
    CANCEL_REQUESTED,
    CONFIRMED,
    DEBOUNCE_MAX_WAIT,
    DEBOUNCE_POLL,
    DEBOUNCE_QUIET,
    DISPATCHED,
    INV_SHIPPED,
    ORDER_CANCELLED,
    ORDER_REJECTED,
    ORDER_SHIPPED,
    PLACED,
    REACHABLE,
    REJECTED_INV,
    RELEASED,
    RESERVED,
    SCHEDULED,
    SHIPMENT_CANCELLED,
    STOCK_LEVEL,
    STOCK_SPACING,
    TERMINAL_WITHIN,
    AddressKey,
    DlqRecord,
    Facts,
    Letter,
    OrderRow,
    Record,
    ReservationRow,
    ShipmentRow,
    StockRow,
    Topics,
    Undecodable,
    address_bursts,
    address_key,
    gather,
    judge,
    of_run,
    order_event_breaks,
    render,
)
from load.nemesis import Poison
from load.runinfo import Check, Injected, JournalEntry, RunDir, RunInfo, Verdict
from order.bootstrap import MIGRATIONS as ORDER_MIGRATIONS
from shared.contracts.catalog import (
    Address,
    OrderLine,
    OrderPlaced,
    ShipmentDispatched,
    StockLevelChanged,
)
from shared.contracts.envelope import new_envelope
from shared.testing.infra import (
    create_database,
    create_topics,
    drop_database,
    kafka_bootstrap,
    unique,
)
from shipping.bootstrap import MIGRATIONS as SHIPPING_MIGRATIONS

TAG = "t1"
HOT, PLENTY = f"L{TAG}-H", f"L{TAG}-A"
STARTED, ENDED = 1000.0, 1100.0
AGGREGATE = {"order": "order", "inventory": "reservation", "shipping": "shipment"}
TOPIC = {"order": "orders", "reservation": "inventory", "shipment": "shipping", "stock": "stock"}
READS = {
    "order": ("inventory", "shipping", "stock"),
    "inventory": ("orders", "shipping"),
    "shipping": ("orders",),
}

SHIPPED = "00000000-0000-0000-0000-000000000001"
REJECTED = "00000000-0000-0000-0000-000000000002"
CANCELLED_PENDING = "00000000-0000-0000-0000-000000000003"
CANCELLED_CONFIRMED = "00000000-0000-0000-0000-000000000004"
SHIPPED_RACE = "00000000-0000-0000-0000-000000000005"
POISON = f"poison-{TAG}-1"


def place(line1: str) -> dict[str, str]:
    return {"line1": line1, "city": "Lyon", "postal_code": "69001", "country": "FR"}


def key_of(address: dict[str, str]) -> AddressKey:
    found = address_key(address)
    assert found is not None
    return found


PLACED_AT, FIRST_MOVE, SECOND_MOVE = place("1 Rue A"), place("2 Rue B"), place("3 Rue C")

# Each order's events as they happen, by producer; sequences follow per producer.
FLOWS: dict[str, list[tuple[str, str]]] = {
    SHIPPED: [
        ("order", PLACED),
        ("inventory", RESERVED),
        ("order", CONFIRMED),
        ("shipping", SCHEDULED),
        ("shipping", DISPATCHED),
        ("order", ORDER_SHIPPED),
        ("inventory", INV_SHIPPED),
    ],
    REJECTED: [("order", PLACED), ("inventory", REJECTED_INV), ("order", ORDER_REJECTED)],
    CANCELLED_PENDING: [
        ("order", PLACED),
        ("order", ORDER_CANCELLED),
        ("inventory", RESERVED),
        ("inventory", RELEASED),
    ],
    CANCELLED_CONFIRMED: [
        ("order", PLACED),
        ("inventory", RESERVED),
        ("order", CONFIRMED),
        ("shipping", SCHEDULED),
        ("order", CANCEL_REQUESTED),
        ("shipping", SHIPMENT_CANCELLED),
        ("order", ORDER_CANCELLED),
        ("inventory", RELEASED),
    ],
    SHIPPED_RACE: [
        ("order", PLACED),
        ("inventory", RESERVED),
        ("order", CONFIRMED),
        ("shipping", SCHEDULED),
        ("order", CANCEL_REQUESTED),
        ("shipping", DISPATCHED),
        ("order", ORDER_SHIPPED),
        ("inventory", INV_SHIPPED),
    ],
}


def run_info(**changes: object) -> RunInfo:
    info = RunInfo(
        run_id="r1",
        tag=TAG,
        seed=1,
        users=2,
        rate=1.0,
        duration=100.0,
        nemesis=True,
        actions=["duplicate", "poison"],
        pitfalls={},
        hot_skus=[HOT],
        skus=[PLENTY],
        start_offsets={"orders": {0: 0}},
        started_at=STARTED,
        ended_at=ENDED,
        healed_at=ENDED + 5,
    )
    return dataclasses.replace(info, **changes)  # type: ignore[arg-type]


def order(
    order_id: str, status: str, items: dict[str, int], n: int, version: int, address: AddressKey
) -> OrderRow:
    return OrderRow(
        order_id, f"load-{TAG}-{n}", status, items, version, f"key-{n}", ENDED + n, address
    )


# The SHIPPED order was moved twice (while PENDING, then CONFIRMED) and went to the second
# address; the others kept the address they were placed with.
ORDERS = [
    order(SHIPPED, "SHIPPED", {PLENTY: 2, HOT: 1}, 1, 5, key_of(SECOND_MOVE)),
    order(REJECTED, "REJECTED", {HOT: 5}, 2, 2, key_of(PLACED_AT)),
    order(CANCELLED_PENDING, "CANCELLED", {PLENTY: 1}, 3, 2, key_of(PLACED_AT)),
    order(CANCELLED_CONFIRMED, "CANCELLED", {PLENTY: 3}, 4, 4, key_of(PLACED_AT)),
    order(SHIPPED_RACE, "SHIPPED", {PLENTY: 1}, 5, 4, key_of(PLACED_AT)),
]
STOCK = [StockRow(PLENTY, 97, 0, 3), StockRow(HOT, 2, 0, 1)]
DISPATCH = {SHIPPED: STARTED + 2.5, SHIPPED_RACE: STARTED + 5.6}  # when each parcel left


def records() -> list[Record]:
    found: list[Record] = []
    offset = 0

    def add(kind: str, source: str, aggregate_type: str, key: str, sequence: int) -> Record:
        nonlocal offset
        offset += 1
        record = Record(
            TOPIC[aggregate_type],
            0,
            offset,
            key,
            kind,
            str(uuid4()),
            source,
            aggregate_type,
            key,
            sequence,
            occurred_at=STARTED + offset / 2,  # stamped half a second apart, as they happen
        )
        found.append(record)
        return record

    for order_id, flow in FLOWS.items():
        sequence: defaultdict[str, int] = defaultdict(int)
        for source, kind in flow:
            sequence[source] += 1
            add(kind, source, AGGREGATE[source], order_id, sequence[source])
    for row, restocked in ((STOCK[0], 100), (STOCK[1], 3)):
        add(STOCK_LEVEL, "inventory", "stock", row.sku, 1)
        found[-1] = dataclasses.replace(found[-1], levels=(restocked, 0, 0))
        add(STOCK_LEVEL, "inventory", "stock", row.sku, 2)
        found[-1] = dataclasses.replace(
            found[-1], levels=(row.available, row.reserved, row.shipped)
        )
    # A relay retry / injected duplicate: the same event again, later on the topic.
    found.append(dataclasses.replace(found[2], offset=offset + 1))
    return found


def with_records(base: Facts, published: list[Record]) -> Facts:
    """``base`` with these records on the topics, and every producer and consumer at their
    streams' ends, as in a run that published them and drained."""
    last: dict[tuple[str, str, str], Record] = {}
    for r in published:
        stream = (r.source, r.aggregate_type, r.aggregate_id)
        if stream not in last or r.sequence > last[stream].sequence:
            last[stream] = r
    return dataclasses.replace(
        base,
        records=published,
        produced={stream: r.sequence for stream, r in last.items()},
        applied={
            (consumer, *stream): r.sequence
            for consumer, topics in READS.items()
            for stream, r in last.items()
            if r.topic in topics
        },
        reads=dict(READS),
    )


def facts() -> Facts:
    base = Facts(
        orders=list(ORDERS),
        stock=list(STOCK),
        reservations=[
            ReservationRow(SHIPPED, "SHIPPED"),
            ReservationRow(REJECTED, "REJECTED"),
            ReservationRow(CANCELLED_PENDING, "RELEASED"),
            ReservationRow(CANCELLED_CONFIRMED, "RELEASED"),
            ReservationRow(SHIPPED_RACE, "SHIPPED"),
        ],
        shipments=[
            ShipmentRow(SHIPPED, "DISPATCHED", key_of(SECOND_MOVE), DISPATCH[SHIPPED]),
            ShipmentRow(CANCELLED_CONFIRMED, "CANCELLED", key_of(PLACED_AT), STARTED + 4.6),
            ShipmentRow(SHIPPED_RACE, "DISPATCHED", key_of(PLACED_AT), DISPATCH[SHIPPED_RACE]),
        ],
        outbox={"order": 0, "inventory": 0, "shipping": 0},
        parked={"order": 0, "inventory": 0, "shipping": 0},
        pending={"order": 0, "inventory": 0, "shipping": 0},
        letters=[
            Letter("inventory", POISON, "not a valid envelope", "orders"),
            Letter("shipping", POISON, "not a valid envelope", "orders"),
        ],
        undecodable=[Undecodable("orders", 0, 99, POISON, "not a valid envelope")],
        dlq=[
            DlqRecord("inventory", 0, 7, POISON, {"dlq.original_topic": "orders"}),
            DlqRecord("shipping", 0, 3, POISON, {"dlq.original_topic": "orders"}),
        ],
        lag={"order-service": 0, "inventory-service": 0, "shipping-service": 0},
        catalog={row.sku: row.available for row in STOCK},
    )
    return with_records(base, records())


def entry(t: float, op: str, status: int, **fields: object) -> JournalEntry:
    """A journal line answered 10 ms after it was sent."""
    return JournalEntry(STARTED + t, op, status, seconds=0.01, **fields)  # type: ignore[arg-type]


def journal() -> list[JournalEntry]:
    entries = [
        entry(-2, "restock", 200, key="r1", sku=PLENTY, quantity=100, total=100),
        entry(-1, "restock", 200, key="r2", sku=HOT, quantity=3, total=3),
    ]
    for n, row in enumerate(ORDERS, start=1):
        entries.append(
            entry(n, "order", 202, key=f"key-{n}", order_id=row.order_id, state="PENDING")
        )
    common = {"order_id": SHIPPED}
    entries += [
        # Moved while PENDING, then once CONFIRMED; read back; read again once shipped.
        entry(1.1, "address", 202, address=FIRST_MOVE, state="PENDING", version=2, **common),
        entry(1.5, "address", 202, address=SECOND_MOVE, state="CONFIRMED", version=4, **common),
        entry(1.6, "read", 200, state="CONFIRMED", version=4, **common),
        entry(4.0, "read", 200, state="SHIPPED", version=5, **common),
        # A retry after a timeout, answered with the same order as it then was.
        entry(10, "order", 0, key="key-1", attempt=1),
        entry(11, "order", 202, key="key-1", order_id=SHIPPED, attempt=2, state="SHIPPED"),
        # Too late to cancel a rejected order; cancelled at once while PENDING; cancelling
        # once CONFIRMED, and shipping agreed; cancelling, and the dispatch won.
        entry(2.9, "cancel", 409, order_id=REJECTED),
        entry(3.2, "cancel", 202, order_id=CANCELLED_PENDING, state="CANCELLED", version=2),
        entry(4.5, "cancel", 202, order_id=CANCELLED_CONFIRMED, state="CANCELLING", version=3),
        entry(5.5, "cancel", 202, order_id=SHIPPED_RACE, state="CANCELLING", version=3),
    ]
    return entries


INJECTED = [
    Injected(
        STARTED + 5, "poison", "orders", 0, 99, POISON, expect_letters=["inventory", "shipping"]
    ),
    Injected(STARTED + 6, "duplicate", "orders", 0, 100, SHIPPED, event_id=str(uuid4())),
]


def verdict(
    the_facts: Facts | None = None,
    the_journal: list[JournalEntry] | None = None,
    info: RunInfo | None = None,
    injected: list[Injected] | None = None,
) -> Verdict:
    return judge(
        info or run_info(),
        facts() if the_facts is None else the_facts,
        journal() if the_journal is None else the_journal,
        INJECTED if injected is None else injected,
    )


def by_number(result: Verdict) -> dict[int, Check]:
    return {int(c.name.split()[0]): c for c in result.checks}


def assert_only(result: Verdict, failing: set[int], offender: str) -> None:
    checks = by_number(result)
    assert {n for n, c in checks.items() if not c.ok} == failing, render(result)
    for n in failing:
        assert any(offender in o for o in checks[n].offending), checks[n]


def replace_order(order_id: str, **changes: object) -> Facts:
    base = facts()
    orders = [
        dataclasses.replace(o, **changes) if o.order_id == order_id else o  # type: ignore[arg-type]
        for o in base.orders
    ]
    return dataclasses.replace(base, orders=orders)


def replace_shipment(order_id: str, **changes: object) -> Facts:
    base = facts()
    shipments = [
        dataclasses.replace(s, **changes) if s.order_id == order_id else s  # type: ignore[arg-type]
        for s in base.shipments
    ]
    return dataclasses.replace(base, shipments=shipments)


def replace_stock(sku: str, **changes: object) -> Facts:
    base = facts()
    stock = [
        dataclasses.replace(s, **changes) if s.sku == sku else s  # type: ignore[arg-type]
        for s in base.stock
    ]
    # The order service's catalog followed (check 4 compares it with the stock).
    catalog = {row.sku: row.available for row in stock}
    return dataclasses.replace(base, stock=stock, catalog=catalog)


def replace_entries(match: dict[str, object], **changes: object) -> list[JournalEntry]:
    """The journal with the entries whose fields match ``match`` changed."""
    return [
        dataclasses.replace(e, **changes)  # type: ignore[arg-type]
        if all(getattr(e, k) == v for k, v in match.items())
        else e
        for e in journal()
    ]


def events_of(the_facts: Facts, order_id: str, kind: str) -> list[Record]:
    return [r for r in the_facts.records if r.aggregate_id == order_id and r.event_type == kind]


# --- a consistent run --------------------------------------------------------------------------


def test_a_consistent_run_passes_every_check() -> None:
    result = verdict()

    assert result.ok, render(result)
    assert [c.name.split()[0] for c in result.checks] == [str(n) for n in range(1, 19)]


def test_the_history_checks_count_what_they_judged() -> None:
    checks = by_number(verdict())

    assert "their 2 acknowledged restocks" in checks[2].detail
    assert "15 streams" in checks[6].detail
    assert "23 consumer positions" in checks[8].detail  # 10 order, 8 inventory, 5 shipping
    assert "(409 1, CANCELLED 1, CANCELLING 2)" in checks[12].detail
    assert "1 CANCELLING lost the race to dispatch" in checks[12].detail
    assert "1 orders kept their binding address change" in checks[13].detail
    assert checks[14].detail.startswith("7 answers and final rows")
    assert checks[15].detail.startswith("13 answers and final rows")
    assert checks[16].detail.startswith("2 restock answers")
    # Two orders cancelled (their inventory streams), two cancellations requested after a
    # confirmation (their shipments), two SKUs' catalog levels.
    assert checks[17].detail.startswith("6 consumer states")
    assert "0 of 15 streams on more than one partition" in checks[17].detail
    assert checks[18].detail.startswith("1 orders' OrderShippingAddressChanged")
    assert "(0 with an unanswered change not judged); 2 consecutive" in checks[18].detail


# --- 1 orders terminal --------------------------------------------------------------------------


def test_an_order_left_pending_fails_terminal_its_bound_and_its_refused_cancel() -> None:
    result = verdict(replace_order(REJECTED, status="PENDING"))

    # A cancel refused as too late said the order had ended.
    assert_only(result, {1, 10, 12}, REJECTED)


def test_an_accepted_order_missing_from_the_database_fails() -> None:
    base = facts()
    gone = dataclasses.replace(
        base,
        orders=[o for o in base.orders if o.order_id != REJECTED],
        reservations=[r for r in base.reservations if r.order_id != REJECTED],
    )

    checks = by_number(
        verdict(with_records(gone, [r for r in base.records if r.aggregate_id != REJECTED]))
    )

    assert not checks[1].ok
    assert any(REJECTED in o and "missing" in o for o in checks[1].offending)


def test_an_order_placed_on_kafka_with_no_row_fails() -> None:
    base = facts()
    phantom = str(UUID(int=99))
    placed = Record("orders", 0, 500, phantom, PLACED, str(uuid4()), "order", "order", phantom, 1)

    checks = by_number(verdict(with_records(base, [*base.records, placed])))

    assert not checks[1].ok
    assert any(phantom in o for o in checks[1].offending)


# --- 2 stock conserved --------------------------------------------------------------------------


def test_a_unit_of_stock_created_fails_conservation() -> None:
    result = verdict(replace_stock(PLENTY, available=98))
    checks = by_number(result)

    assert not checks[2].ok
    assert any(PLENTY in o and "put in 100, holds 101" in o for o in checks[2].offending)
    assert checks[3].ok  # shipped still matches the orders


def test_a_unit_left_reserved_fails_conservation() -> None:
    checks = by_number(verdict(replace_stock(HOT, available=1, reserved=1)))

    assert not checks[2].ok
    assert any(HOT in o and "reserved 1" in o for o in checks[2].offending)


def test_every_acknowledged_restock_adds_to_the_stock_put_in() -> None:
    later = entry(50, "restock", 200, key="r3", sku=PLENTY, quantity=50, total=150)

    result = verdict(the_journal=[*journal(), later])

    assert_only(result, {2}, f"{PLENTY} put in 150, holds 100")


def test_a_restock_retried_with_its_key_counts_once() -> None:
    retried = [
        entry(-3, "restock", 0, key="r1", sku=PLENTY, quantity=100, attempt=1),
        *replace_entries({"key": "r1"}, attempt=2),
    ]

    assert verdict(the_journal=retried).ok


def test_a_restock_never_acknowledged_makes_its_sku_inconclusive() -> None:
    lost = [
        entry(50, "restock", 0, key="r3", sku=HOT, quantity=2),
        entry(52, "restock", 503, key="r3", sku=HOT, quantity=2, attempt=2),
    ]

    result = verdict(the_journal=[*journal(), *lost])

    assert_only(result, {2}, HOT)
    assert by_number(result)[2].offending == [
        f"{HOT} inconclusive: restock r3 (2 units) sent at 1050.000 was never acknowledged"
        " (last status 503)"
    ]


def test_a_restock_refused_as_invalid_does_not_count() -> None:
    refused = entry(50, "restock", 422, key="r3", sku=HOT, quantity=0)

    assert verdict(the_journal=[*journal(), refused]).ok


# --- 3 shipped matches orders ------------------------------------------------------------------


def test_a_shipped_count_off_fails_shipped_only() -> None:
    result = verdict(replace_stock(PLENTY, available=96, shipped=4))
    checks = by_number(result)

    assert not checks[3].ok
    assert any(f"{PLENTY} shipped 4, SHIPPED orders hold 3" in o for o in checks[3].offending)
    assert checks[2].ok  # the total is still what was put in


# --- 4 services agree ---------------------------------------------------------------------------


def test_a_second_shipment_fails_agreement() -> None:
    base = facts()
    twice = [*base.shipments, ShipmentRow(SHIPPED, "DISPATCHED", key_of(SECOND_MOVE), 1002.5)]

    assert_only(verdict(dataclasses.replace(base, shipments=twice)), {4}, SHIPPED)


def test_a_cancelled_order_holding_a_reservation_and_a_live_shipment_fails() -> None:
    base = facts()
    reservations = [
        ReservationRow(r.order_id, "RESERVED") if r.order_id == CANCELLED_CONFIRMED else r
        for r in base.reservations
    ]
    shipments = [
        dataclasses.replace(s, status="SCHEDULED") if s.order_id == CANCELLED_CONFIRMED else s
        for s in base.shipments
    ]
    result = verdict(dataclasses.replace(base, reservations=reservations, shipments=shipments))

    # Its cancel was answered CANCELLING: the end it was promised is broken too. Stock held
    # after inventory applied the OrderCancelled is what a cancel applied first leaves (17).
    assert_only(result, {4, 12, 17}, CANCELLED_CONFIRMED)
    assert len(by_number(result)[4].offending) == 2


def test_a_shipped_order_whose_reservation_is_not_shipped_fails() -> None:
    base = facts()
    reservations = [r for r in base.reservations if r.order_id != SHIPPED]

    assert_only(verdict(dataclasses.replace(base, reservations=reservations)), {4}, SHIPPED)


def test_a_catalog_left_at_an_older_level_fails_agreement_and_order() -> None:
    """A stale StockLevelChanged applied after a newer one (no dedup, no sequence check)."""
    stale = dataclasses.replace(facts(), catalog={PLENTY: 100, HOT: 2})

    checks = by_number(verdict(stale))

    assert {n for n, c in checks.items() if not c.ok} == {4, 17}
    assert checks[4].offending == [f"{PLENTY} available 97, the order service's catalog says 100"]
    assert checks[17].offending == [
        f"order applied inventory/stock/{PLENTY} #1 (available 100) after #2 (available 97):"
        " its catalog shows the older level"
    ]


# --- 5 one order per key ------------------------------------------------------------------------


def test_two_answers_for_one_key_naming_different_orders_fail() -> None:
    other = entry(20, "order", 202, key="key-2", order_id=SHIPPED, attempt=2)

    result = verdict(the_journal=[*journal(), other])

    assert_only(result, {5}, "key-2")


def test_an_answer_naming_an_order_of_another_key_fails() -> None:
    result = verdict(replace_order(REJECTED, idempotency_key="key-9"))

    assert_only(result, {5}, f"key key-2: answered {REJECTED}, which has key key-9")


# --- 6 published --------------------------------------------------------------------------------


def test_an_event_committed_and_never_published_fails_even_the_last_of_its_stream() -> None:
    base = facts()
    stream = ("order", "order", SHIPPED)  # OrderShipped #3 is its last on the topic

    result = verdict(dataclasses.replace(base, produced={**base.produced, stream: 4}))

    assert_only(
        result, {6}, f"order/order/{SHIPPED}: its producer counted #4, the topic's last is #3"
    )


def test_an_outbox_row_or_a_held_event_of_the_run_left_fails() -> None:
    base = facts()
    stuck = dataclasses.replace(
        base, outbox={**base.outbox, "shipping": 1}, pending={**base.pending, "inventory": 1}
    )

    assert by_number(verdict(stuck))[6].offending == [
        "shipping outbox 1",
        "inventory debounce pending 1",
    ]


# --- 7 dead letters -----------------------------------------------------------------------------


def test_an_unexpected_and_a_missing_dead_letter_fail() -> None:
    base = facts()
    letters = [
        Letter("shipping", POISON, "x", "orders"),
        Letter("order", SHIPPED, "handler failed", "inventory"),
    ]
    dlq = [
        DlqRecord("shipping", 0, 3, POISON, {}),
        DlqRecord("order", 0, 4, SHIPPED, {}),
    ]
    result = verdict(dataclasses.replace(base, letters=letters, dlq=dlq))
    checks = by_number(result)

    assert_only(result, {7}, POISON)
    assert f"missing from inventory's dead_letters: {POISON}" in checks[7].offending
    assert f"missing from inventory.dlq: {POISON}" in checks[7].offending
    assert f"unexpected order:{SHIPPED}" in checks[7].offending


def test_a_dead_letter_only_in_the_table_is_missing_from_the_topic() -> None:
    base = facts()
    dlq = [r for r in base.dlq if r.service != "shipping"]

    offending = by_number(verdict(dataclasses.replace(base, dlq=dlq)))[7].offending

    assert offending == [f"missing from shipping.dlq: {POISON}"]


# --- 8 sequences --------------------------------------------------------------------------------


def test_a_sequence_gap_fails() -> None:
    base = facts()
    lost = events_of(base, SHIPPED, CONFIRMED)[0]  # order stream, sequence 2
    kept = [r for r in base.records if r.event_id != lost.event_id]
    result = verdict(dataclasses.replace(base, records=kept))
    checks = by_number(result)

    assert not checks[8].ok
    assert checks[8].offending == [f"order/order/{SHIPPED} gap at 2"]
    assert not checks[9].ok  # and the lost OrderConfirmed is a missing effect


def test_two_event_ids_at_one_sequence_fail() -> None:
    base = facts()
    (placed,) = events_of(base, REJECTED, PLACED)
    twin = dataclasses.replace(placed, event_id=str(uuid4()), offset=900)
    checks = by_number(verdict(dataclasses.replace(base, records=[*base.records, twin])))

    assert not checks[8].ok
    assert checks[8].offending == [f"order/order/{REJECTED} #1: 2 event ids"]


def test_an_undecodable_record_of_a_run_order_fails_but_poison_does_not() -> None:
    base = facts()
    bad = Undecodable("orders", 1, 5, SHIPPED, "not a valid envelope")

    result = verdict(dataclasses.replace(base, undecodable=[*base.undecodable, bad]))

    assert_only(result, {8}, f"undecodable orders[1]@5 key {SHIPPED}")


def test_a_consumer_behind_the_last_event_of_a_stream_fails() -> None:
    """An offset committed before its event was applied (auto-commit, then a kill)."""
    base = facts()
    position = ("inventory", "order", "order", SHIPPED)

    result = verdict(dataclasses.replace(base, applied={**base.applied, position: 2}))

    assert_only(
        result,
        {8},
        f"inventory behind on order/order/{SHIPPED}: applied #2, the topic's last is #3",
    )


def test_a_consumer_ahead_of_the_topic_fails() -> None:
    base = facts()
    ghost = ("shipping", "order", "order", str(UUID(int=77)))

    result = verdict(dataclasses.replace(base, applied={**base.applied, ghost: 1}))

    assert_only(result, {8}, f"shipping ahead on order/order/{ghost[3]}: applied #1")


def test_a_lost_last_event_leaves_no_gap_and_is_seen_by_its_producer_and_consumers() -> None:
    base = facts()
    (dispatched,) = events_of(base, SHIPPED_RACE, DISPATCHED)  # the shipment stream's last
    kept = [r for r in base.records if r.event_id != dispatched.event_id]

    result = verdict(dataclasses.replace(base, records=kept))
    checks = by_number(result)

    assert_only(result, {6, 8, 9}, SHIPPED_RACE)
    assert not any("gap" in o for o in checks[8].offending)
    assert (
        f"order ahead on shipping/shipment/{SHIPPED_RACE}: applied #2, the topic's last is #1"
        in checks[8].offending
    )
    assert f"{SHIPPED_RACE} SHIPPED: ShipmentDispatched x0, expected 1" in checks[9].offending


def test_parked_events_and_lag_fail_sequences() -> None:
    base = facts()
    stuck = dataclasses.replace(
        base, parked={**base.parked, "order": 2}, lag={**base.lag, "shipping-service": 5}
    )

    assert by_number(verdict(stuck))[8].offending == ["order parked 2", "shipping-service lag 5"]


# --- 9 event counts -----------------------------------------------------------------------------


def test_a_duplicate_order_confirmed_with_a_new_event_id_fails_counts_only() -> None:
    base = facts()
    last = max(
        r.sequence for r in base.records if r.aggregate_id == SHIPPED and r.source == "order"
    )
    confirmed = events_of(base, SHIPPED, CONFIRMED)[0]  # two copies of one event
    again = dataclasses.replace(confirmed, event_id=str(uuid4()), sequence=last + 1, offset=901)

    result = verdict(with_records(base, [*base.records, again]))

    assert_only(result, {9}, f"{SHIPPED} SHIPPED: OrderConfirmed x2")


def test_a_stale_last_stock_level_fails_counts() -> None:
    base = facts()
    records_ = [
        dataclasses.replace(r, levels=(3, 0, 0)) if r.aggregate_id == HOT and r.sequence == 2 else r
        for r in base.records
    ]

    result = verdict(dataclasses.replace(base, records=records_))

    assert_only(result, {9}, f"{HOT}: last StockLevelChanged (3, 0, 0)")


@pytest.mark.parametrize(
    ("status", "events"),
    [
        (
            "SHIPPED",
            [PLACED, RESERVED, CONFIRMED, SCHEDULED, DISPATCHED, ORDER_SHIPPED, INV_SHIPPED],
        ),
        (
            "SHIPPED",
            [
                PLACED,
                RESERVED,
                CONFIRMED,
                SCHEDULED,
                CANCEL_REQUESTED,
                DISPATCHED,
                ORDER_SHIPPED,
                INV_SHIPPED,
            ],
        ),
        ("REJECTED", [PLACED, REJECTED_INV, ORDER_REJECTED]),
        ("CANCELLED", [PLACED, ORDER_CANCELLED, REJECTED_INV]),
        ("CANCELLED", [PLACED, ORDER_CANCELLED, RESERVED, RELEASED]),
        (
            "CANCELLED",
            [
                PLACED,
                RESERVED,
                CONFIRMED,
                SCHEDULED,
                CANCEL_REQUESTED,
                SHIPMENT_CANCELLED,
                ORDER_CANCELLED,
                RELEASED,
            ],
        ),
        ("PENDING", [PLACED]),
        (
            "CONFIRMED",
            [
                PLACED,
                RESERVED,
                CONFIRMED,
                "OrderShippingAddressChanged",
                "OrderShippingAddressChanged",
            ],
        ),
    ],
)
def test_the_event_rules_accept_every_legitimate_life(status: str, events: list[str]) -> None:
    counts: defaultdict[str, int] = defaultdict(int)
    for kind in events:
        counts[kind] += 1

    assert order_event_breaks(status, counts) == []


@pytest.mark.parametrize(
    ("status", "events", "broken"),
    [
        (
            "SHIPPED",
            [PLACED, RESERVED, CONFIRMED, SCHEDULED, ORDER_SHIPPED, INV_SHIPPED],
            DISPATCHED,
        ),
        ("REJECTED", [PLACED, REJECTED_INV, ORDER_REJECTED, RESERVED], RESERVED),
        ("CANCELLED", [PLACED, ORDER_CANCELLED, RESERVED], RELEASED),
        (
            "CANCELLED",
            [PLACED, RESERVED, CONFIRMED, SCHEDULED, ORDER_CANCELLED, RELEASED],
            CANCEL_REQUESTED,
        ),
        ("CANCELLED", [PLACED, REJECTED_INV, ORDER_CANCELLED, DISPATCHED], DISPATCHED),
        ("PENDING", [PLACED, PLACED], PLACED),
        ("CANCELLED", [PLACED, ORDER_CANCELLED, RESERVED, REJECTED_INV, RELEASED], REJECTED_INV),
        (
            "CANCELLED",
            [
                PLACED,
                RESERVED,
                CONFIRMED,
                CANCEL_REQUESTED,
                SHIPMENT_CANCELLED,
                ORDER_CANCELLED,
                RELEASED,
            ],
            SCHEDULED,
        ),
        ("PENDING", [PLACED, RESERVED, RESERVED], f"{RESERVED} x2"),
    ],
)
def test_the_event_rules_reject_lost_and_extra_effects(
    status: str, events: list[str], broken: str
) -> None:
    counts: defaultdict[str, int] = defaultdict(int)
    for kind in events:
        counts[kind] += 1

    breaks = order_event_breaks(status, counts)

    assert any(broken in b for b in breaks), breaks


# --- 10 terminal in time ------------------------------------------------------------------------


def test_an_order_that_ended_late_fails_the_bound() -> None:
    late = TERMINAL_WITHIN + 5
    result = verdict(replace_order(REJECTED, updated_at=ENDED + late))
    checks = by_number(result)

    assert_only(result, {10}, REJECTED)
    assert f"{late:.1f} s after the load stopped" in checks[10].detail


def test_an_order_that_ended_before_the_load_stopped_is_said_to_have() -> None:
    """The fixture's last order ends 5 s after ``ENDED``; this load stopped 10.4 s after it."""
    stopped = ENDED + 10.4
    checks = by_number(verdict(info=run_info(ended_at=stopped, healed_at=stopped)))

    assert checks[10].ok
    assert "ended 5.4 s before the load stopped" in checks[10].detail


def test_the_bound_counts_from_the_end_of_the_load_not_from_the_healing() -> None:
    """Healing took 50 s; an order that ended 45 s later ended 95 s after the load."""
    late = replace_order(REJECTED, updated_at=ENDED + 95)
    checks = by_number(verdict(late, info=run_info(healed_at=ENDED + 50)))

    assert not checks[10].ok
    assert "95.0 s after the load stopped (bound 90 s; healing took 50.0 s)" in checks[10].detail


def test_a_run_without_an_end_cannot_bound_its_orders() -> None:
    assert not by_number(verdict(info=run_info(ended_at=None)))[10].ok


# --- 11 answers documented ----------------------------------------------------------------------


def test_a_write_answered_500_fails_the_answers_check_only() -> None:
    entries = [*journal(), entry(20, "cancel", 500, order_id=SHIPPED)]
    assert_only(verdict(the_journal=entries), {11}, f"cancel {SHIPPED} answered 500")


def test_a_503_and_no_answer_are_documented_answers() -> None:
    entries = [*journal(), entry(20, "order", 503, key="key-x"), entry(21, "order", 0, key="key-y")]
    assert by_number(verdict(the_journal=entries))[11].ok


# --- 12 cancels honoured ------------------------------------------------------------------------


def test_a_cancel_refused_as_too_late_for_an_order_that_ended_cancelled_fails() -> None:
    refused = entry(4.6, "cancel", 409, order_id=CANCELLED_CONFIRMED)

    result = verdict(the_journal=[*journal(), refused])

    assert_only(
        result, {12}, f"{CANCELLED_CONFIRMED} cancel answered 409 at 1004.600: ended CANCELLED"
    )


def test_a_cancel_answered_cancelling_whose_shipment_was_never_cancelled_fails() -> None:
    base = facts()
    shipments = [s for s in base.shipments if s.order_id != CANCELLED_CONFIRMED]

    result = verdict(dataclasses.replace(base, shipments=shipments))

    assert_only(result, {12}, "shipping did not cancel its shipment (none)")


def test_a_cancel_answered_cancelled_for_an_order_that_shipped_fails() -> None:
    said = replace_entries({"op": "cancel", "order_id": SHIPPED_RACE}, state="CANCELLED")

    result = verdict(the_journal=said)

    # The order was also shown CANCELLED, then ended SHIPPED: it went backwards.
    assert_only(result, {12, 15}, SHIPPED_RACE)
    assert by_number(result)[12].offending == [
        f"{SHIPPED_RACE} cancel answered CANCELLED at 1005.500: ended SHIPPED"
    ]


def test_a_cancel_answered_202_with_a_status_a_cancel_never_answers_fails() -> None:
    said = replace_entries({"op": "cancel", "order_id": CANCELLED_CONFIRMED}, state="CONFIRMED")

    assert_only(verdict(the_journal=said), {12}, "not an answer a cancel has")


def test_a_cancelled_order_whose_stock_was_not_released_fails() -> None:
    base = facts()
    reservations = [
        ReservationRow(r.order_id, "RESERVED") if r.order_id == CANCELLED_PENDING else r
        for r in base.reservations
    ]

    result = verdict(dataclasses.replace(base, reservations=reservations))

    # 17: inventory applied the cancel and holds the stock, as if the cancel came first.
    assert_only(result, {4, 12, 17}, CANCELLED_PENDING)
    assert "its stock not released (reservation ['RESERVED'])" in by_number(result)[12].offending[0]


# --- 13 addresses honoured ----------------------------------------------------------------------


def test_a_shipped_order_showing_another_address_than_its_parcels_fails() -> None:
    result = verdict(replace_shipment(SHIPPED, address=key_of(FIRST_MOVE)))

    assert_only(
        result,
        {13},
        f"{SHIPPED} SHIPPED showing '3 Rue C, Lyon', its parcel went to '2 Rue B, Lyon'",
    )


def test_a_change_acknowledged_while_pending_that_missed_the_parcel_fails() -> None:
    """The confirmation, committed after the change, carries it to shipping."""
    base = replace_shipment(SHIPPED, address=key_of(PLACED_AT))
    moved_back = dataclasses.replace(
        base,
        orders=[
            dataclasses.replace(o, address=key_of(PLACED_AT)) if o.order_id == SHIPPED else o
            for o in base.orders
        ],
    )

    result = verdict(moved_back)

    assert_only(result, {13}, f"{SHIPPED} its parcel went to '1 Rue A, Lyon', not '2 Rue B, Lyon'")


def test_a_change_acknowledged_long_before_dispatch_binds_the_parcel() -> None:
    moved = entry(
        5.2,
        "address",
        202,
        order_id=SHIPPED_RACE,
        address=SECOND_MOVE,
        state="CONFIRMED",
        version=3,
    )
    late = replace_shipment(SHIPPED_RACE, updated_at=STARTED + 5.3 + ADDRESS_SETTLED)
    soon = replace_shipment(SHIPPED_RACE, updated_at=STARTED + 5.2 + ADDRESS_SETTLED)

    # Within the debounce's wait and the margin the change may lose the race to the parcel.
    assert verdict(soon, [*journal(), moved]).ok
    assert_only(verdict(late, [*journal(), moved]), {13}, SHIPPED_RACE)


def test_a_change_acknowledged_shortly_before_dispatch_may_lose_the_race() -> None:
    """The second move was acknowledged 1 s before the parcel left: it went to the first."""
    base = replace_shipment(SHIPPED, address=key_of(FIRST_MOVE))
    first = dataclasses.replace(
        base,
        orders=[
            dataclasses.replace(o, address=key_of(FIRST_MOVE)) if o.order_id == SHIPPED else o
            for o in base.orders
        ],
    )

    assert verdict(first).ok


def test_a_change_never_answered_may_have_landed_after_the_acknowledged_one() -> None:
    unanswered = entry(1.2, "address", 0, order_id=SHIPPED, address=place("9 Rue Z"))
    base = replace_shipment(SHIPPED, address=key_of(place("9 Rue Z")))
    there = dataclasses.replace(
        base,
        orders=[
            dataclasses.replace(o, address=key_of(place("9 Rue Z"))) if o.order_id == SHIPPED else o
            for o in base.orders
        ],
    )
    refused = dataclasses.replace(unanswered, status=422)

    assert by_number(verdict(there, [*journal(), unanswered]))[13].ok
    assert not by_number(verdict(there, [*journal(), refused]))[13].ok


def test_a_cancelled_order_not_showing_its_last_acknowledged_address_fails() -> None:
    moved = entry(
        3.1,
        "address",
        202,
        order_id=CANCELLED_PENDING,
        address=FIRST_MOVE,
        state="PENDING",
        version=2,
    )

    result = verdict(the_journal=[*journal(), moved])

    assert_only(result, {13}, f"{CANCELLED_PENDING} CANCELLED, it shows '1 Rue A, Lyon'")


# --- 14 read your writes ------------------------------------------------------------------------


def test_a_read_older_than_an_acknowledged_write_fails() -> None:
    stale = replace_entries({"op": "read", "order_id": SHIPPED, "version": 4}, version=3)

    result = verdict(the_journal=stale)

    assert_only(
        result,
        {14},
        f"{SHIPPED} read at 1001.600 showed version 3 after address at 1001.500 had shown 4",
    )


def test_a_read_sent_before_the_write_was_answered_may_be_older() -> None:
    concurrent = replace_entries(
        {"op": "read", "order_id": SHIPPED, "version": 4}, t=STARTED + 1.505, version=3
    )

    assert verdict(the_journal=concurrent).ok


def test_a_final_row_older_than_an_answer_fails() -> None:
    result = verdict(replace_order(SHIPPED, version=4))

    assert_only(
        result, {14}, f"{SHIPPED} the final row showed version 4 after read at 1004.000 had shown 5"
    )


def test_an_acknowledged_order_answered_404_fails() -> None:
    missing = entry(1.7, "read", 404, order_id=SHIPPED)

    result = verdict(the_journal=[*journal(), missing])

    assert_only(
        result, {14}, f"{SHIPPED} read at 1001.700 answered 404, the order acknowledged at 1001.010"
    )


# --- 15 status never backwards ------------------------------------------------------------------


def test_a_status_going_backwards_fails() -> None:
    back = replace_entries({"op": "read", "order_id": SHIPPED, "version": 5}, state="PENDING")

    result = verdict(the_journal=back)

    assert_only(
        result,
        {15},
        f"{SHIPPED} read at 1004.000 showed PENDING after read at 1001.600 had shown CONFIRMED",
    )


def test_the_statuses_an_order_may_take_after_each_other() -> None:
    assert REACHABLE["CANCELLING"] == {"CANCELLING", "CANCELLED", "SHIPPED"}
    assert "REJECTED" not in REACHABLE["CONFIRMED"]
    assert REACHABLE["PENDING"] == {
        "PENDING",
        "CONFIRMED",
        "CANCELLING",
        "SHIPPED",
        "REJECTED",
        "CANCELLED",
    }
    assert all(REACHABLE[s] == {s} for s in ("SHIPPED", "REJECTED", "CANCELLED"))


# --- 16 restock answers -------------------------------------------------------------------------


def test_a_restock_answer_missing_its_own_units_fails() -> None:
    lying = replace_entries({"key": "r2"}, total=2)

    assert_only(verdict(the_journal=lying), {16}, f"{HOT} restock r2 answered a total of 2")


def test_a_restock_answer_counting_a_restock_not_yet_sent_fails() -> None:
    ahead = replace_entries({"key": "r1"}, total=150)

    assert_only(verdict(the_journal=ahead), {16}, "not within 100..100")


def test_a_restock_answer_counting_an_unanswered_restock_sent_before_it_passes() -> None:
    entries = [
        entry(48, "restock", 0, key="r3", sku=HOT, quantity=2),
        entry(50, "restock", 200, key="r4", sku=HOT, quantity=4, total=9),
        entry(51, "restock", 200, key="r3", sku=HOT, quantity=2, total=9, attempt=2),
    ]
    result = verdict(replace_stock(HOT, available=8), [*journal(), *entries])

    assert by_number(result)[16].ok
    assert by_number(result)[2].ok


# --- 17 applied in order -----------------------------------------------------------------------


def test_a_cancel_applied_before_its_order_leaves_the_stock_held_and_fails() -> None:
    """Inventory applied OrderCancelled (#2) first: nothing to release; then OrderPlaced (#1)
    reserved for good (unkeyed publishing without the sequence check)."""
    base = facts()
    reservations = [
        ReservationRow(r.order_id, "RESERVED") if r.order_id == CANCELLED_PENDING else r
        for r in base.reservations
    ]
    result = verdict(dataclasses.replace(base, reservations=reservations))

    # The cancelled order holds stock (4), its cancel was answered CANCELLED (12).
    assert_only(result, {4, 12, 17}, CANCELLED_PENDING)
    assert by_number(result)[17].offending == [
        f"inventory applied order/order/{CANCELLED_PENDING} #2 OrderCancelled before #1"
        " OrderPlaced: the cancel found nothing to release, the reservation taken after it is"
        " RESERVED"
    ]


def test_stock_held_for_a_cancel_inventory_has_not_applied_is_not_called_out_of_order() -> None:
    base = facts()
    reservations = [
        ReservationRow(r.order_id, "RESERVED") if r.order_id == CANCELLED_PENDING else r
        for r in base.reservations
    ]
    behind = {**base.applied, ("inventory", "order", "order", CANCELLED_PENDING): 1}

    result = verdict(dataclasses.replace(base, reservations=reservations, applied=behind))

    # Inventory is behind on the order's stream (8): never given the cancel, not out of order.
    assert_only(result, {4, 8, 12}, CANCELLED_PENDING)


def never_scheduled(address: AddressKey | None) -> Facts:
    """CANCELLED_CONFIRMED's shipping stream without its ShipmentScheduled (ShipmentCancelled
    is #1) and its shipment row with ``address``."""
    base = facts()
    published = [
        dataclasses.replace(r, sequence=1)
        if (r.aggregate_id, r.event_type) == (CANCELLED_CONFIRMED, SHIPMENT_CANCELLED)
        else r
        for r in base.records
        if (r.aggregate_id, r.event_type) != (CANCELLED_CONFIRMED, SCHEDULED)
    ]
    shipments = [
        dataclasses.replace(s, address=address) if s.order_id == CANCELLED_CONFIRMED else s
        for s in base.shipments
    ]
    return with_records(dataclasses.replace(base, shipments=shipments), published)


def test_a_shipment_cancelled_before_its_confirmation_was_applied_fails() -> None:
    """Shipping applied OrderCancellationRequested (#3) before OrderConfirmed (#2): it
    created the shipment cancelled, then the confirmation found it and was ignored."""
    result = verdict(never_scheduled(None))

    assert_only(result, {9, 17}, CANCELLED_CONFIRMED)  # 9: ShipmentScheduled x0
    assert by_number(result)[17].offending == [
        f"shipping applied order/order/{CANCELLED_CONFIRMED} #3 OrderCancellationRequested"
        " before #2 OrderConfirmed: it cancelled a shipment it never scheduled and ignored the"
        " confirmation"
    ]


def test_a_scheduled_shipment_whose_event_is_missing_is_no_reordering() -> None:
    # The row has the confirmation's address: shipping scheduled it, its event was lost.
    assert_only(verdict(never_scheduled(key_of(PLACED_AT))), {9}, CANCELLED_CONFIRMED)


def test_streams_spread_over_partitions_and_applied_in_order_pass() -> None:
    """Unkeyed publishing with the sequence check on: the provocation without its harm."""
    base = facts()
    spread = [
        dataclasses.replace(r, partition=r.sequence % 2) if r.aggregate_id == SHIPPED else r
        for r in base.records
    ]

    result = verdict(with_records(base, spread))

    assert result.ok, render(result)
    # SHIPPED's order, reservation and shipment streams.
    assert "3 of 15 streams on more than one partition" in by_number(result)[17].detail


def test_a_record_published_without_a_key_is_the_run_s_by_its_aggregate() -> None:
    def record(key: str | None, aggregate_id: str) -> Record:
        return Record("orders", 3, 1, key, PLACED, "e", "order", "order", aggregate_id, 1)

    run = {SHIPPED, HOT}
    assert of_run(record(None, SHIPPED), run)
    assert of_run(record(SHIPPED, SHIPPED), run)
    assert not of_run(record(None, REJECTED), run)
    assert not of_run(record("other", SHIPPED), run)  # keyed: its key decides


# --- 18 storms debounced ------------------------------------------------------------------------


def with_address_events(count: int) -> Facts:
    """SHIPPED's stream with ``count`` more OrderShippingAddressChanged, a second apart."""
    base = facts()
    ours = [r.sequence for r in base.records if r.aggregate_id == SHIPPED and r.source == "order"]
    last = max(ours)
    added = [
        Record(
            "orders",
            0,
            700 + n,
            SHIPPED,
            ADDRESS_CHANGED,
            str(uuid4()),
            "order",
            "order",
            SHIPPED,
            last + 1 + n,
            occurred_at=STARTED + 3 + n,
        )
        for n in range(count)
    ]
    return with_records(base, [*base.records, *added])


def test_one_address_event_for_a_burst_of_changes_passes() -> None:
    """SHIPPED's two changes, 0.4 s apart, crossed Kafka as one event: debounced."""
    result = verdict(with_address_events(1))

    assert result.ok, render(result)


def test_one_address_event_per_change_of_a_burst_fails() -> None:
    """PITFALL_NO_DEBOUNCE: every change of the burst is an event of its own."""
    result = verdict(with_address_events(2))

    assert_only(result, {18}, SHIPPED)
    assert by_number(result)[18].offending == [
        f"{SHIPPED} 2 OrderShippingAddressChanged for 2 acknowledged address changes, at most 1"
        " burst(s)"
    ]


def test_changes_a_quiet_period_apart_may_be_two_events() -> None:
    # Sent 0.97 s after the last one was sent, answered 10 ms later: the debounce may have
    # emitted the first burst between them. (Before the dispatch at 2.5 s.)
    later = entry(2.47, "address", 202, order_id=SHIPPED, address=SECOND_MOVE, state="CONFIRMED")
    result = verdict(with_address_events(2), [*journal(), later])

    assert result.ok, render(result)
    assert_only(verdict(with_address_events(3), [*journal(), later]), {18}, SHIPPED)


def test_an_order_with_an_unanswered_address_change_is_not_judged() -> None:
    """A change that got no answer may have landed at any moment after it was sent."""
    lost = entry(1.3, "address", 0, order_id=SHIPPED, address=SECOND_MOVE)

    result = verdict(with_address_events(3), [*journal(), lost])

    assert by_number(result)[18].ok
    assert "(1 with an unanswered change not judged)" in by_number(result)[18].detail


def changes(*sent: tuple[float, float]) -> list[JournalEntry]:
    """Acknowledged address changes, each (sent, seconds to its answer)."""
    return [JournalEntry(t, "address", 202, order_id=SHIPPED, seconds=s) for t, s in sent]


@pytest.mark.parametrize(
    ("sent", "bursts"),
    [
        # One after the other, answered fast: one burst however many changes.
        ([(0.0, 0.01), (0.1, 0.01), (0.4, 0.01), (0.6, 0.01)], 1),
        # A pause over the quiet period: the debounce may have emitted in it.
        ([(0.0, 0.01), (0.1, 0.01), (0.1 + DEBOUNCE_QUIET, 0.01)], 2),
        # Never quiet, but past the maximum wait from the burst's first change: then again.
        ([(t / 2, 0.01) for t in range(int(4 * DEBOUNCE_MAX_WAIT) + 1)], 3),
        # A slow answer: the change may have landed late, after an emission.
        ([(0.0, 0.01), (0.1, DEBOUNCE_QUIET)], 2),
        ([], 0),
    ],
)
def test_address_bursts_counts_where_the_debounce_may_have_emitted(
    sent: list[tuple[float, float]], bursts: int
) -> None:
    assert address_bursts(changes(*sent)) == bursts


def test_two_stock_levels_stamped_within_a_poll_fail() -> None:
    """PITFALL_NO_DEBOUNCE: two movements of one transaction, two events microseconds apart."""
    base = facts()
    first = next(r for r in base.records if r.aggregate_id == HOT and r.sequence == 1)
    records_ = [
        dataclasses.replace(r, occurred_at=first.occurred_at + 0.001)
        if r.aggregate_id == HOT and r.sequence == 2
        else r
        for r in base.records
    ]

    result = verdict(dataclasses.replace(base, records=records_))

    assert_only(result, {18}, HOT)
    assert by_number(result)[18].offending == [
        f"{HOT} StockLevelChanged #1 and #2 stamped 0.001 s apart"
    ]


def test_stock_levels_a_poll_apart_pass() -> None:
    base = facts()
    first = next(r for r in base.records if r.aggregate_id == HOT and r.sequence == 1)
    assert STOCK_SPACING < DEBOUNCE_POLL
    records_ = [
        dataclasses.replace(r, occurred_at=first.occurred_at + DEBOUNCE_POLL)
        if r.aggregate_id == HOT and r.sequence == 2
        else r
        for r in base.records
    ]

    assert verdict(dataclasses.replace(base, records=records_)).ok


# --- output -------------------------------------------------------------------------------------


def test_render_prints_each_check_and_at_most_ten_offenders() -> None:
    base = facts()
    many = [Letter("order", f"k{n}", "x", "orders") for n in range(15)]
    text = render(verdict(dataclasses.replace(base, letters=[*base.letters, *many])))

    assert "PASS  1 orders terminal" in text
    assert "FAIL  7 dead letters = poison: 15 dead letters missing or unexpected" in text
    assert text.count("unexpected order:k") == 10
    assert text.endswith("FAILED ['7 dead letters = poison']")


def test_each_group_and_consumer_reads_the_topics_its_service_handles() -> None:
    assert dict(Topics().groups) == {
        "order-service": ("inventory", "shipping", "stock"),
        "inventory-service": ("orders", "shipping"),
        "shipping-service": ("orders",),
    }
    assert dict(Topics().consumers) == READS


# --- gather against real PostgreSQL and Kafka --------------------------------------------------


@pytest.fixture
async def databases() -> AsyncIterator[dict[str, str]]:
    urls = {
        "order": await create_database(ORDER_MIGRATIONS),
        "inventory": await create_database(INVENTORY_MIGRATIONS),
        "shipping": await create_database(SHIPPING_MIGRATIONS),
    }
    try:
        yield urls
    finally:
        for url in urls.values():
            await drop_database(url)


ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


async def seed_databases(urls: dict[str, str], run_order: UUID, other: UUID, sku: str) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(urls["order"])
    try:
        for order_id, customer, key in (
            (run_order, f"load-{TAG}-1", "k-1"),
            (other, "someone", "k-2"),
        ):
            await conn.execute(
                """
                INSERT INTO orders (order_id, customer_id, status, items, shipping_address,
                                    version, correlation_id, idempotency_key, request_hash,
                                    created_at, updated_at)
                VALUES ($1, $2, 'SHIPPED', $3, $4, 4, 'c', $5, 'h', $6, $6)
                """,
                order_id,
                customer,
                json.dumps([{"sku": sku, "quantity": 2}]),
                ADDRESS.model_dump_json(),
                key,
                now,
            )
        # The run's: an outbox row of its order and its order's stream position; not the
        # run's: another aggregate's.
        await conn.execute(
            """
            INSERT INTO outbox (event_id, topic, message_key, value, headers)
            VALUES ($1, 'orders', $2, 'v', '{}'), ($3, 'orders', 'k', 'v', '{}')
            """,
            uuid4(),
            str(run_order),
            uuid4(),
        )
        await conn.execute(
            "INSERT INTO outbox_sequences (aggregate_type, aggregate_id, last_sequence)"
            " VALUES ('order', $1, 1), ('order', $2, 7)",
            str(run_order),
            str(other),
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(urls["inventory"])
    try:
        await conn.execute(
            "INSERT INTO stock (sku, available, reserved, shipped) VALUES ($1, 8, 0, 2),"
            " ('not-ours', 1, 0, 0)",
            sku,
        )
        await conn.execute(
            "INSERT INTO reservations (order_id, items, status) VALUES ($1, '[]', 'SHIPPED'),"
            " ($2, '[]', 'SHIPPED')",
            run_order,
            other,
        )
        await conn.execute(
            """
            INSERT INTO dead_letters (consumer, topic, partition, "offset", message_key, value,
                                      headers, error, attempts, created_at)
            VALUES ('inventory', 'orders', 0, 1, $1, 'x', '{}', 'not a valid envelope', 1, now()),
                   ('inventory', 'orders', 0, 2, 'old', 'x', '{}', 'before the run', 1,
                    now() - interval '1 day')
            """,
            POISON.encode(),
        )
        await conn.execute(
            "INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,"
            " last_sequence) VALUES ('inventory', 'order', 'order', $1, 1),"
            " ('inventory', 'order', 'order', $2, 7)",
            str(run_order),
            str(other),
        )
        await conn.execute(
            """
            INSERT INTO debounced_events (aggregate_type, aggregate_id, event_type,
                                          schema_version, payload, correlation_id,
                                          trace_headers, first_at, last_at)
            VALUES ('stock', $1, 'StockLevelChanged', 1, '{}', 'c', '{}', now(), now())
            """,
            sku,
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(urls["shipping"])
    try:
        await conn.execute(
            """
            INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                                   updated_at, shipping_address)
            VALUES ($1, $2, 'DISPATCHED', now(), now(), to_timestamp(1700000000), $3)
            """,
            run_order,
            uuid4(),
            ADDRESS.model_dump_json(),
        )
        await conn.execute(
            """
            INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id, sequence,
                                       topic, partition, "offset", value, headers)
            VALUES ('shipping', 'order', 'order', 'x', 3, 'orders', 0, 9, 'v', '{}')
            """
        )
    finally:
        await conn.close()


@pytest.mark.integration
async def test_gather_reads_the_runs_facts_back(databases: dict[str, str], tmp_path: Path) -> None:
    names = {t: unique(f"chk_{t}") for t in ("orders", "shipping", "stock", "dlq")}
    await create_topics(*names.values(), partitions=1)
    group = unique("chk_group")
    topics = Topics(
        events=(names["orders"], names["shipping"], names["stock"]),
        dead_letters={"inventory": names["dlq"]},
        groups={group: (names["orders"],)},
    )
    run_order, other, sku = uuid4(), uuid4(), f"L{TAG}-{uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap())
    await producer.start()
    try:
        # Before the run: not read.
        await producer.send_and_wait(names["orders"], b"before", key=str(run_order).encode())
        start = {names["orders"]: {0: 1}, names["shipping"]: {0: 0}, names["stock"]: {0: 0}}
        info = run_info(hot_skus=[], skus=[sku], start_offsets=start, started_at=0.0)
        info = dataclasses.replace(info, started_at=datetime.now(UTC).timestamp() - 5)
        run = RunDir(tmp_path)
        run.write_info(info)
        await seed_databases(databases, run_order, other, sku)

        def envelope(payload: object, aggregate_id: str, sequence: int, source: str) -> bytes:
            return new_envelope(
                payload,  # type: ignore[arg-type]
                source=source,
                aggregate_id=aggregate_id,
                sequence=sequence,
                correlation_id="c",
                causation_id=None,
            ).to_bytes()

        lines = (OrderLine(sku=sku, quantity=2),)
        placed = envelope(
            OrderPlaced(
                order_id=run_order,
                customer_id=f"load-{TAG}-1",
                items=lines,
                shipping_address=ADDRESS,
            ),
            str(run_order),
            1,
            "order",
        )
        foreign = envelope(
            OrderPlaced(
                order_id=other, customer_id="someone", items=lines, shipping_address=ADDRESS
            ),
            str(other),
            1,
            "order",
        )
        # An order only Kafka knows of, placed by a run customer: it belongs to the run.
        ghost = uuid4()
        ghostly = envelope(
            OrderPlaced(
                order_id=ghost, customer_id=f"load-{TAG}-9", items=lines, shipping_address=ADDRESS
            ),
            str(ghost),
            1,
            "order",
        )
        dispatched = envelope(
            ShipmentDispatched(order_id=run_order, shipment_id=uuid4()),
            str(run_order),
            1,
            "shipping",
        )
        level = envelope(
            StockLevelChanged(sku=sku, available=8, reserved=0, shipped=2), sku, 1, "inventory"
        )
        for topic, key, value in [
            (names["orders"], str(run_order), placed),
            (names["orders"], str(run_order), placed),  # a duplicate copy
            (names["orders"], str(other), foreign),
            (names["orders"], str(ghost), ghostly),
            (names["orders"], POISON, b"{not json"),
            (names["orders"], "stranger", b"{not json"),
            (names["shipping"], str(run_order), dispatched),
            (names["stock"], sku, level),
            # An unknown-version poison: an envelope with the type but none of its fields.
            (
                names["stock"],
                POISON,
                Poison(POISON, "stock", "unknown_version", STOCK_LEVEL).value(),
            ),
            (names["dlq"], POISON, b"{not json"),
        ]:
            headers = [("dlq.consumer", b"inventory")] if topic == names["dlq"] else []
            await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)
    finally:
        await producer.stop()
    # The group read the first four records of orders: 3 behind.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(names["orders"], 0)])
        await consumer.commit({TopicPartition(names["orders"], 0): 4})
    finally:
        await consumer.stop()

    found = await gather(run, urls=databases, bootstrap=kafka_bootstrap(), topics=topics)

    where = address_key(ADDRESS.model_dump())
    assert [
        (o.order_id, o.customer_id, o.status, o.items, o.version, o.idempotency_key, o.address)
        for o in found.orders
    ] == [(str(run_order), f"load-{TAG}-1", "SHIPPED", {sku: 2}, 4, "k-1", where)]
    assert found.stock == [StockRow(sku, 8, 0, 2)]
    assert found.reservations == [ReservationRow(str(run_order), "SHIPPED")]
    assert found.shipments == [ShipmentRow(str(run_order), "DISPATCHED", where, 1700000000.0)]
    # Held back: the run's outbox row and held event, and anything parked since it began.
    assert (found.outbox, found.pending, found.parked) == (
        {"order": 1, "inventory": 0, "shipping": 0},
        {"order": 0, "inventory": 1, "shipping": 0},
        {"order": 0, "inventory": 0, "shipping": 1},
    )
    # Where the producers and the consumers stand in the run's streams.
    assert (found.produced, found.applied, found.reads) == (
        {("order", "order", str(run_order)): 1},
        {("inventory", "order", "order", str(run_order)): 1},
        dict(Topics().consumers),
    )
    assert found.letters == [Letter("inventory", POISON, "not a valid envelope", "orders")]
    assert sorted(
        (r.topic, r.event_type, r.aggregate_id, r.sequence) for r in found.records
    ) == sorted(
        [
            (names["orders"], PLACED, str(run_order), 1),
            (names["orders"], PLACED, str(run_order), 1),
            (names["orders"], PLACED, str(ghost), 1),
            (names["shipping"], DISPATCHED, str(run_order), 1),
            (names["stock"], STOCK_LEVEL, sku, 1),
        ]
    )
    assert [r.levels for r in found.records if r.event_type == STOCK_LEVEL] == [(8, 0, 2)]
    assert [(u.topic, u.key) for u in found.undecodable] == [(names["orders"], POISON)]
    assert [(d.service, d.key, d.headers) for d in found.dlq] == [
        ("inventory", POISON, {"dlq.consumer": "inventory"})
    ]
    assert found.lag == {group: 3}
