"""The consistency checker: after a load run, read the three databases and the topics and say,
invariant by invariant, whether the system kept its promises (DESIGN.md, "Consistency
invariants"), with the ids that break each one.

    python -m load.checker reports/load/<run_id>     # exit 1 when any check fails

:func:`gather` only reads (the services' databases and the topics from the run's start
offsets); :func:`judge` is pure, one small function per check, so each can be shown to fail
on synthetic :class:`Facts`. Everything is scoped to the run: its orders (customer ids
``load-<tag>-``, and every order id the journal or an ``OrderPlaced`` of a run customer
names), its SKUs, the records keyed by them, the producers' and consumers' positions in
their streams. Where the invariant is global it is read globally: consumer lag, and the
events parked and dead letters written since the run started (what an earlier test left
parked is not the run's).

Checks 1-11 judge where the run ended; checks 12-16 judge its history, the journal (every
request, when it was sent and answered, and what each answer showed) against the final
state: what the API acknowledged must have happened, and no answer may show an order older
than one its customer was shown before asking. Checks 17 and 18 catch the pitfalls the
others do not name: an event applied before an earlier one of its stream (the states only
that leaves), and a burst that crossed Kafka as more than one debounced event.

Check 9, the event counts, counts DISTINCT event ids per order and type (copies of one
event, from relay retries or injected duplicates, are one event). The rules, from the state
machines (``order.domain.order``, ``inventory.domain.stock``, ``shipping.domain.shipment``)
and the handlers that react to each event:

- every order: exactly one ``OrderPlaced``; exactly one of ``InventoryReserved`` and
  ``InventoryRejected`` (inventory answers each order once, whatever happened to it
  meanwhile); ``ShipmentScheduled`` as many as ``OrderConfirmed`` (shipping schedules on
  confirmation, which precedes any cancellation on the order's stream); no
  ``OrderConfirmed`` without ``InventoryReserved``; no type more than once, except
  ``OrderShippingAddressChanged`` (one per burst of address edits, debounced: any number);
- ``SHIPPED``: one each of ``InventoryReserved``, ``OrderConfirmed``, ``ShipmentScheduled``,
  ``ShipmentDispatched``, ``OrderShipped``, ``InventoryShipped``; none of
  ``InventoryRejected``, ``OrderRejected``, ``OrderCancelled``, ``ShipmentCancelled``,
  ``InventoryReleased``; ``OrderCancellationRequested`` zero or one (a cancel that lost the
  race with dispatch);
- ``REJECTED``: one ``InventoryRejected`` and one ``OrderRejected``, nothing else but
  ``OrderPlaced`` (and address changes);
- ``CANCELLED``: one ``OrderCancelled``; no ``ShipmentDispatched``, ``OrderShipped``,
  ``InventoryShipped``, ``OrderRejected``; either cancelled while pending (no
  ``OrderConfirmed``, ``OrderCancellationRequested`` or ``ShipmentCancelled``) or after
  confirmation (one of each: shipping agreed); ``InventoryReleased`` exactly when
  ``InventoryReserved`` (inventory gives back what it held when the order is cancelled,
  including a reservation that arrived after a cancel while pending).

Per run SKU (``stock`` topic), the last ``StockLevelChanged`` (highest sequence) carries the
SKU's final levels: every movement is recorded and, once nothing is pending, published.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from infra.services import router_of
from infra.settings import DLQ_TOPICS, SERVICES, TOPICS, ports
from inventory.domain.stock import ReservationStatus
from load.runinfo import Check, Injected, JournalEntry, RunDir, RunInfo, Verdict
from order.domain.order import TERMINAL, OrderStatus
from shared.consuming.inbox import Stream
from shared.contracts import IntegrationEvent, spec_of
from shared.contracts.catalog import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    InventoryShipped,
    OrderCancellationRequested,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderShippingAddressChanged,
    ShipmentCancelled,
    ShipmentDispatched,
    ShipmentScheduled,
    StockLevelChanged,
)
from shared.contracts.envelope import MalformedEnvelopeError, parse_envelope
from shared.service.settings import ServiceSettings
from shipping.domain.shipment import ShipmentStatus

# Seconds after the load stopped (Locust exited) by which every order must have ended. The
# window holds the undoing of whatever fault was in progress at the end (a Kafka restart and
# its partitions back in sync, a consumer group's rebalance after a pause: up to about a
# minute) and the drain of the backlog.
TERMINAL_WITHIN = 90.0
# An address change acknowledged this long before its shipment's dispatch is where the
# parcel goes: the debounce holds it at most DEBOUNCE_MAX_WAIT_SECONDS (its default, which
# load runs keep), and the margin covers the rest of its way (the emitter's poll, the relay,
# Kafka, shipping's consumer) held up by one nemesis fault: a 15 s pause and the rebalance
# after it (10 s session timeout), or a Kafka restart.
ADDRESS_MARGIN = 30.0
ADDRESS_SETTLED = ServiceSettings.model_fields["debounce_max_wait_seconds"].default + ADDRESS_MARGIN
_DEBOUNCE = ServiceSettings.model_fields
# The debounce contract (shared.writing.debounce), as load runs keep it (the settings' defaults): a
# held event goes out once its aggregate has had no change for DEBOUNCE_QUIET s, or once its
# first change is DEBOUNCE_MAX_WAIT s old; the emitter looks every DEBOUNCE_POLL s.
DEBOUNCE_QUIET = float(_DEBOUNCE["debounce_quiet_seconds"].default)
DEBOUNCE_MAX_WAIT = float(_DEBOUNCE["debounce_max_wait_seconds"].default)
DEBOUNCE_POLL = float(_DEBOUNCE["debounce_poll_seconds"].default)
# Readings of one clock (the journal's, the database's, a service's) taken for one moment
# may differ by this much: the burst bounds of check 18 give it away.
CLOCK_SLACK = 0.05
# Check 18: two StockLevelChanged of one SKU stamped (occurred_at) closer than this were not
# debounced. An emitter stamps a held event after claiming it and claims the next only after
# its commit and a poll's sleep, and a new burst waits a quiet period after its first change
# (which comes after the claim): consecutive events of one aggregate are a poll apart and
# more. The difference to the poll covers the wall clock's slew.
STOCK_SPACING = DEBOUNCE_POLL - CLOCK_SLACK
SAMPLE = 20  # offending ids kept per check
READ_TIMEOUT = 300.0  # seconds to read the topics to their ends


def _type(event: type[IntegrationEvent]) -> str:
    return spec_of(event).event_type


PLACED, RESERVED, REJECTED_INV = (
    _type(OrderPlaced),
    _type(InventoryReserved),
    _type(InventoryRejected),
)
CONFIRMED, ORDER_REJECTED = _type(OrderConfirmed), _type(OrderRejected)
SCHEDULED, DISPATCHED = _type(ShipmentScheduled), _type(ShipmentDispatched)
ORDER_SHIPPED, INV_SHIPPED = _type(OrderShipped), _type(InventoryShipped)
CANCEL_REQUESTED, ORDER_CANCELLED = _type(OrderCancellationRequested), _type(OrderCancelled)
SHIPMENT_CANCELLED, RELEASED = _type(ShipmentCancelled), _type(InventoryReleased)
ADDRESS_CHANGED, STOCK_LEVEL = _type(OrderShippingAddressChanged), _type(StockLevelChanged)
REPEATABLE = frozenset({ADDRESS_CHANGED})  # debounced: one per burst, any number per order

LIVE_SHIPMENT = frozenset({ShipmentStatus.SCHEDULED.value, ShipmentStatus.DISPATCHED.value})
HELD = frozenset({ReservationStatus.RESERVED.value, ReservationStatus.SHIPPED.value})

# What an order's status may become, from the state machine (``order.domain.order``):
# PENDING -> CONFIRMED | REJECTED | CANCELLED; CONFIRMED -> CANCELLING | SHIPPED;
# CANCELLING -> CANCELLED | SHIPPED (the dispatch won the race); the terminal ones never
# change. An answer showing a status not reachable from one shown before went backwards.
_NEXT: dict[str, set[str]] = {
    OrderStatus.PENDING: {OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.CANCELLED},
    OrderStatus.CONFIRMED: {OrderStatus.CANCELLING, OrderStatus.SHIPPED},
    OrderStatus.CANCELLING: {OrderStatus.CANCELLED, OrderStatus.SHIPPED},
}


def _reachable(status: str) -> frozenset[str]:
    found, todo = {status}, [status]
    while todo:
        for after in _NEXT.get(todo.pop(), set()) - found:
            found.add(after)
            todo.append(after)
    return frozenset(found)


REACHABLE = {s.value: _reachable(s.value) for s in OrderStatus}

AddressKey = tuple[str, str, str, str]  # line1, city, postal_code, country
Position = tuple[str, str, str, str]  # consumer, and the stream: source, type, aggregate id


def address_key(value: Mapping[str, object] | str | None) -> AddressKey | None:
    """An address as the API's JSON or a database's jsonb text holds it, comparable."""
    raw = json.loads(value) if isinstance(value, str) else value
    if not isinstance(raw, Mapping):
        return None
    line1, city, postal_code, country = (
        str(raw.get(f, "")) for f in ("line1", "city", "postal_code", "country")
    )
    return line1, city, postal_code, country


# --- what was read ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    customer_id: str
    status: str
    items: dict[str, int]  # SKU -> quantity
    version: int
    idempotency_key: str | None
    updated_at: float  # epoch seconds
    address: AddressKey | None = None


@dataclass(frozen=True)
class StockRow:
    sku: str
    available: int
    reserved: int
    shipped: int


@dataclass(frozen=True)
class ReservationRow:
    order_id: str
    status: str


@dataclass(frozen=True)
class ShipmentRow:
    order_id: str
    status: str
    address: AddressKey | None = None  # where it goes; for a DISPATCHED one, where it went
    updated_at: float = 0.0  # epoch seconds; for a DISPATCHED one, its dispatch


@dataclass(frozen=True)
class Letter:
    """A row of a service's ``dead_letters`` table."""

    service: str
    key: str | None
    error: str
    topic: str  # where the record came from


@dataclass(frozen=True)
class Record:
    """An envelope read from an event topic."""

    topic: str
    partition: int
    offset: int
    key: str | None
    event_type: str
    event_id: str
    source: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    levels: tuple[int, int, int] | None = None  # StockLevelChanged: available, reserved, shipped
    occurred_at: float = 0.0  # epoch seconds: when its producer appended it to its outbox


@dataclass(frozen=True)
class Undecodable:
    topic: str
    partition: int
    offset: int
    key: str | None
    error: str


@dataclass(frozen=True)
class DlqRecord:
    service: str  # whose dead-letter topic
    partition: int
    offset: int
    key: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class Facts:
    orders: list[OrderRow] = field(default_factory=list)
    stock: list[StockRow] = field(default_factory=list)
    reservations: list[ReservationRow] = field(default_factory=list)
    shipments: list[ShipmentRow] = field(default_factory=list)
    outbox: dict[str, int] = field(default_factory=dict)  # service -> the run's rows waiting
    parked: dict[str, int] = field(default_factory=dict)  # service -> parked events
    pending: dict[str, int] = field(default_factory=dict)  # service -> the run's held events
    produced: dict[Stream, int] = field(default_factory=dict)  # the producer's last sequence
    applied: dict[Position, int] = field(default_factory=dict)  # a consumer's last applied
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # consumer -> its topics
    letters: list[Letter] = field(default_factory=list)  # written since the run started
    records: list[Record] = field(default_factory=list)  # the run's, from its start offsets
    undecodable: list[Undecodable] = field(default_factory=list)  # the run's keys, poison too
    dlq: list[DlqRecord] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)  # consumer group -> records behind
    catalog: dict[str, int] = field(default_factory=dict)  # the order service's SKU -> available


# --- reading ---------------------------------------------------------------------------------


def _routed_topics() -> dict[str, tuple[str, ...]]:
    """Consuming service -> the topics it reads, from each service's routing."""
    return {service: tuple(router_of(service).topics) for service in SERVICES}


def _consumed_topics() -> dict[str, tuple[str, ...]]:
    """Consumer group -> the topics it reads."""
    return {f"{service}-service": topics for service, topics in _routed_topics().items()}


@dataclass(frozen=True)
class Topics:
    """Where gather reads: the event topics, each service's dead-letter topic, the topics
    of each consumer group whose lag it measures, and the topics each service's consumer
    reads (whose streams its stored positions follow)."""

    events: tuple[str, ...] = TOPICS
    dead_letters: Mapping[str, str] = field(
        default_factory=lambda: dict(zip(SERVICES, DLQ_TOPICS, strict=True))
    )
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=_consumed_topics)
    consumers: Mapping[str, tuple[str, ...]] = field(default_factory=_routed_topics)


def database_urls() -> dict[str, str]:
    port = ports().postgres
    return {s: f"postgresql://postgres@127.0.0.1:{port}/{s}" for s in SERVICES}


async def gather(
    run: RunDir,
    *,
    urls: Mapping[str, str] | None = None,
    bootstrap: str | None = None,
    topics: Topics | None = None,
) -> Facts:
    """Read what the run left (read-only): the databases at ``urls`` (service -> URL; by
    default the launcher's), the topics at ``bootstrap`` (default the launcher's Kafka)."""
    info = run.info()
    urls = urls or database_urls()
    bootstrap = bootstrap or ports().bootstrap_servers()
    topics = topics or Topics()
    journal_ids = {o for e in run.journal() if (o := _order_id(e.order_id))}

    orders = await _read_orders(urls["order"], info.customer_prefix, sorted(journal_ids))
    raw, undecodable, dlq = await _read_topics(info, bootstrap, topics)
    placed = {
        r.aggregate_id
        for r, customer in raw
        if r.event_type == PLACED and customer.startswith(info.customer_prefix)
    }
    run_orders = {o.order_id for o in orders} | journal_ids | placed
    keys = run_orders | set(info.all_skus)
    records = [r for r, _ in raw if of_run(r, keys)]
    run_keys = [u for u in undecodable if u.key in keys or _poison(info, u.key)]

    facts = Facts(
        orders=orders, records=records, undecodable=run_keys, dlq=dlq, reads=dict(topics.consumers)
    )
    ids = sorted(run_orders)
    for service, url in urls.items():
        await _read_service(facts, service, url, info, ids)
    facts.lag.update(await _lag(bootstrap, topics.groups))
    return facts


def of_run(record: Record, keys: Collection[str]) -> bool:
    """Whether ``record`` is of the run, whose aggregate ids are ``keys``: by its key, which
    is its aggregate id, or, published without one (``PITFALL_UNKEYED``), by its aggregate
    id."""
    return (record.aggregate_id if record.key is None else record.key) in keys


def _order_id(value: str | None) -> str | None:
    try:
        return None if value is None else str(UUID(value))
    except ValueError:
        return None


def _poison(info: RunInfo, key: str | None) -> bool:
    return key is not None and key.startswith(info.poison_prefix)


def _stock_levels(payload: Mapping[str, object]) -> tuple[int, int, int] | None:
    """A ``StockLevelChanged`` payload's (available, reserved, shipped); None for one without
    them (an unknown-version poison record carries the event type but not the fields)."""
    available, reserved, shipped = (payload.get(f) for f in ("available", "reserved", "shipped"))
    if isinstance(available, int) and isinstance(reserved, int) and isinstance(shipped, int):
        return available, reserved, shipped
    return None


async def _read_orders(url: str, prefix: str, ids: list[str]) -> list[OrderRow]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """
            SELECT order_id::text, customer_id, status, items, version, idempotency_key,
                   extract(epoch FROM updated_at)::float8 AS updated_at, shipping_address
            FROM orders
            WHERE starts_with(customer_id, $1) OR order_id = ANY($2::uuid[])
            """,
            prefix,
            ids,
        )
    finally:
        await conn.close()
    return [
        OrderRow(
            r["order_id"],
            r["customer_id"],
            r["status"],
            {line["sku"]: line["quantity"] for line in json.loads(r["items"])},
            r["version"],
            r["idempotency_key"],
            r["updated_at"],
            address_key(r["shipping_address"]),
        )
        for r in rows
    ]


async def _read_service(
    facts: Facts, service: str, url: str, info: RunInfo, order_ids: list[str]
) -> None:
    keys = [*order_ids, *info.all_skus]  # the run's aggregate ids, its message keys
    conn = await asyncpg.connect(url)
    try:
        facts.outbox[service] = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE message_key = ANY($1)", keys
        )
        facts.parked[service] = await conn.fetchval(
            "SELECT count(*) FROM parked_events WHERE parked_at >= to_timestamp($1)",
            info.started_at,
        )
        facts.pending[service] = await conn.fetchval(
            "SELECT count(*) FROM debounced_events WHERE aggregate_id = ANY($1)", keys
        )
        produced = await conn.fetch(
            "SELECT aggregate_type, aggregate_id, last_sequence FROM outbox_sequences"
            " WHERE aggregate_id = ANY($1)",
            keys,
        )
        facts.produced.update(((service, r[0], r[1]), r[2]) for r in produced)
        applied = await conn.fetch(
            "SELECT consumer, source, aggregate_type, aggregate_id, last_sequence"
            " FROM consumer_sequences WHERE aggregate_id = ANY($1)",
            keys,
        )
        facts.applied.update(((r[0], r[1], r[2], r[3]), r[4]) for r in applied)
        letters = await conn.fetch(
            "SELECT message_key, error, topic FROM dead_letters"
            " WHERE created_at >= to_timestamp($1)",
            info.started_at,
        )
        facts.letters.extend(
            Letter(service, _text(r["message_key"]), r["error"], r["topic"]) for r in letters
        )
        tables = {
            t
            for (t,) in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        if "known_skus" in tables:
            rows = await conn.fetch(
                "SELECT sku, available FROM known_skus WHERE sku = ANY($1)", info.all_skus
            )
            facts.catalog.update((r[0], r[1]) for r in rows)
        if "stock" in tables:
            rows = await conn.fetch(
                "SELECT sku, available, reserved, shipped FROM stock WHERE sku = ANY($1)",
                info.all_skus,
            )
            facts.stock.extend(StockRow(r[0], r[1], r[2], r[3]) for r in rows)
        if "reservations" in tables:
            rows = await conn.fetch(
                "SELECT order_id::text, status FROM reservations WHERE order_id = ANY($1::uuid[])",
                order_ids,
            )
            facts.reservations.extend(ReservationRow(r[0], r[1]) for r in rows)
        if "shipments" in tables:
            rows = await conn.fetch(
                "SELECT order_id::text, status, shipping_address,"
                " extract(epoch FROM updated_at)::float8 FROM shipments"
                " WHERE order_id = ANY($1::uuid[])",
                order_ids,
            )
            facts.shipments.extend(ShipmentRow(r[0], r[1], address_key(r[2]), r[3]) for r in rows)
    finally:
        await conn.close()


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


async def _read_topics(
    info: RunInfo, bootstrap: str, topics: Topics
) -> tuple[list[tuple[Record, str]], list[Undecodable], list[DlqRecord]]:
    """Every record of the event and dead-letter topics from the run's start (its start
    offsets; a topic without one from the first record written after ``started_at``) to the
    ends as they are now. Event records come with the customer of an ``OrderPlaced``."""
    dlq_service = {topic: service for service, topic in topics.dead_letters.items()}
    partitions = await topic_partitions(bootstrap, [*topics.events, *dlq_service])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        starts = await _start_offsets(consumer, info, partitions, ends)
        todo = {tp for tp in partitions if starts[tp] < ends[tp]}
        events: list[tuple[Record, str]] = []
        undecodable: list[Undecodable] = []
        dlq: list[DlqRecord] = []
        if not todo:
            return events, undecodable, dlq
        consumer.assign(sorted(todo))
        for tp in todo:
            consumer.seek(tp, starts[tp])
        deadline = time.monotonic() + READ_TIMEOUT
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not read to their ends: {sorted(map(str, todo))}")
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=5000)
            for tp, batch_records in batch.items():
                for rec in batch_records:
                    if rec.offset >= ends[tp]:
                        continue
                    key = _text(rec.key)
                    if tp.topic in dlq_service:
                        headers = {k: v.decode(errors="replace") for k, v in rec.headers}
                        dlq.append(
                            DlqRecord(
                                dlq_service[tp.topic], rec.partition, rec.offset, key, headers
                            )
                        )
                        continue
                    try:
                        envelope = parse_envelope(rec.value)
                    except MalformedEnvelopeError as exc:
                        undecodable.append(
                            Undecodable(tp.topic, rec.partition, rec.offset, key, str(exc)[:200])
                        )
                        continue
                    payload = envelope.payload
                    levels = _stock_levels(payload) if envelope.event_type == STOCK_LEVEL else None
                    record = Record(
                        tp.topic,
                        rec.partition,
                        rec.offset,
                        key,
                        envelope.event_type,
                        str(envelope.event_id),
                        envelope.source,
                        envelope.aggregate_type,
                        envelope.aggregate_id,
                        envelope.sequence,
                        levels,
                        envelope.occurred_at.timestamp(),
                    )
                    events.append((record, str(payload.get("customer_id", ""))))
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return events, undecodable, dlq
    finally:
        await consumer.stop()


async def topic_partitions(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    """The partitions of those of ``topics`` that exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        known = set(await admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t in known]
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return [
        TopicPartition(d["topic"], p["partition"])
        for d in described
        for p in sorted(d["partitions"], key=lambda p: p["partition"])
    ]


async def _start_offsets(
    consumer: AIOKafkaConsumer,
    info: RunInfo,
    partitions: list[TopicPartition],
    ends: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    starts: dict[TopicPartition, int] = {}
    by_time: list[TopicPartition] = []
    for tp in partitions:
        given = info.start_offsets.get(tp.topic, {}).get(tp.partition)
        if given is None:
            by_time.append(tp)
        else:
            starts[tp] = given
    if by_time:
        found = await consumer.offsets_for_times(
            {tp: int(info.started_at * 1000) for tp in by_time}
        )
        for tp in by_time:
            at = found.get(tp)
            starts[tp] = ends[tp] if at is None else at.offset
    return starts


async def _lag(bootstrap: str, groups: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Per group: records of its topics not yet committed (a partition never committed counts
    from its first record)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        lag: dict[str, int] = {}
        for group, group_topics in groups.items():
            partitions = await topic_partitions(bootstrap, list(group_topics))
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(partitions)
            firsts = await consumer.beginning_offsets(partitions)
            behind = 0
            for tp in partitions:
                meta = committed.get(tp)
                at = meta.offset if meta is not None and meta.offset >= 0 else firsts[tp]
                behind += max(ends[tp] - at, 0)
            lag[group] = behind
        return lag
    finally:
        await consumer.stop()
        await admin.close()


# --- judging ---------------------------------------------------------------------------------


def judge(
    info: RunInfo, facts: Facts, journal: list[JournalEntry], injected: list[Injected]
) -> Verdict:
    """Every invariant, one :class:`Check` each, from what was read; no I/O."""
    return Verdict(
        [
            orders_terminal(facts, journal),
            stock_conserved(info, facts, journal),
            shipped_matches_orders(info, facts),
            services_agree(facts),
            one_order_per_key(facts, journal),
            published(facts),
            dead_letters_are_poison(facts, injected),
            sequences(info, facts),
            event_counts(info, facts),
            terminal_in_time(info, facts),
            answers_documented(journal),
            cancels_honoured(facts, journal),
            addresses_honoured(facts, journal),
            reads_your_writes(facts, journal),
            status_never_backwards(facts, journal),
            restock_answers(journal),
            applied_in_order(info, facts),
            storms_debounced(info, facts, journal),
        ]
    )


# What the API may answer a write with, whatever fails behind it: success, a client error
# the customers provoke on purpose (a late cancel, an unknown order), 429 with Retry-After
# from the address-change rate limit (off unless ADDRESS_CHANGE_RATE_LIMIT is set), or 503
# with Retry-After while its database is away or a transaction lost a race. Never a 500: a
# broker's death in particular is invisible to a write, which only reaches the service's own
# database (the outbox); status 0 is no answer at all (the process killed or paused, the
# client's timeout).
DOCUMENTED_ANSWERS = frozenset({0, 200, 202, 404, 409, 422, 429, 503})


def answers_documented(journal: list[JournalEntry]) -> Check:
    writes = [e for e in journal if e.op != "read"]
    odd = [
        f"{e.op} {e.key or e.order_id or e.sku} answered {e.status} at {e.t:.3f}"
        for e in writes
        if e.status not in DOCUMENTED_ANSWERS
    ]
    unanswered = sum(1 for e in writes if e.status == 0)
    return _check(
        "11 answers documented",
        odd,
        f"{len(writes)} writes answered {', '.join(map(str, sorted(DOCUMENTED_ANSWERS - {0})))}"
        f" or not at all ({unanswered}); no 500",
        "{n} writes answered with a status the API does not document",
    )


def _check(name: str, offending: Iterable[str], passed: str, failed: str) -> Check:
    """A check that fails when anything offends; ``failed`` may use ``{n}``."""
    found = list(dict.fromkeys(offending))
    if not found:
        return Check(name, True, passed)
    return Check(name, False, failed.format(n=len(found)), found[:SAMPLE])


def _accepted(journal: list[JournalEntry]) -> list[JournalEntry]:
    return [e for e in journal if e.op == "order" and e.status == 202]


def orders_terminal(facts: Facts, journal: list[JournalEntry]) -> Check:
    by_id = {o.order_id: o for o in facts.orders}
    accepted = {o for e in _accepted(journal) if (o := _order_id(e.order_id))}
    missing = [f"{o} missing" for o in sorted(accepted - by_id.keys())]
    placed = {r.aggregate_id for r in facts.records if r.event_type == PLACED}
    phantom = [f"{o} placed on Kafka, no row" for o in sorted(placed - by_id.keys())]
    open_ = [f"{o.order_id} {o.status}" for o in facts.orders if o.status not in TERMINAL]
    return _check(
        "1 orders terminal",
        [*missing, *phantom, *open_],
        f"{len(accepted)} accepted orders exist; all {len(facts.orders)} of the run are terminal",
        f"{{n}} orders missing or not terminal ({len(missing)} missing, {len(phantom)} with"
        f" no row, {len(open_)} not terminal)",
    )


def _unclear(status: int) -> bool:
    """No answer, or a server error: the write may or may not have happened."""
    return status == 0 or status >= 500


@dataclass
class Restock:
    """One restock of a SKU, over its attempts (one Idempotency-Key: a retry adds once)."""

    key: str
    sku: str
    quantity: int | None
    sent_at: float  # its first attempt
    acked_at: float | None = None  # when its first 2xx came back
    unclear: JournalEntry | None = None  # an attempt that got no clear answer
    answers: list[JournalEntry] = field(default_factory=list)  # its 2xx answers


def restocks(journal: list[JournalEntry]) -> dict[str, list[Restock]]:
    """SKU -> its restocks, in the order they were first sent. Keys are scoped by SKU, as
    the API scopes them; an entry without a key is a restock of its own."""
    found: dict[tuple[str, str], Restock] = {}
    entries = sorted((e for e in journal if e.op == "restock" and e.sku), key=lambda e: e.t)
    for n, e in enumerate(entries):
        sku, key = e.sku or "", e.key or f"unkeyed-{n}"
        restock = found.setdefault((sku, key), Restock(key, sku, e.quantity, e.t))
        if 200 <= e.status < 300:
            first = restock.acked_at
            restock.acked_at = e.answered_at if first is None else min(first, e.answered_at)
            restock.answers.append(e)
        elif _unclear(e.status):
            restock.unclear = e
    by_sku: defaultdict[str, list[Restock]] = defaultdict(list)
    for restock in found.values():
        by_sku[restock.sku].append(restock)
    return by_sku


def _doubt(mine: list[Restock]) -> str | None:
    """Why a SKU's stock put in is unknown: a restock never acknowledged (no answer, or a
    server error, after every retry), or acknowledged with no quantity journaled."""
    for r in mine:
        if r.acked_at is None and r.unclear is not None:
            return (
                f"restock {r.key} ({r.quantity} units) sent at {r.sent_at:.3f} was never"
                f" acknowledged (last status {r.unclear.status})"
            )
        if r.acked_at is not None and r.quantity is None:
            return f"restock {r.key} acknowledged, its quantity not journaled"
    return None


def stock_conserved(info: RunInfo, facts: Facts, journal: list[JournalEntry]) -> Check:
    rows = {s.sku: s for s in facts.stock}
    by_sku = restocks(journal)
    offending: list[str] = []
    counted = 0
    for sku in info.all_skus:
        mine = by_sku.get(sku, [])
        if (doubt := _doubt(mine)) is not None:
            offending.append(f"{sku} inconclusive: {doubt}")
            continue
        acked = [r.quantity or 0 for r in mine if r.acked_at is not None]
        counted += len(acked)
        put_in, row = sum(acked), rows.get(sku)
        if row is None:
            if put_in:
                offending.append(f"{sku} no stock row (put in {put_in})")
            continue
        total = row.available + row.reserved + row.shipped
        if min(row.available, row.reserved, row.shipped) < 0:
            offending.append(f"{sku} negative {_levels(row)}")
        if row.reserved != 0:
            offending.append(f"{sku} reserved {row.reserved}")
        if total != put_in:
            offending.append(f"{sku} put in {put_in}, holds {total} ({_levels(row)})")
    return _check(
        "2 stock conserved",
        offending,
        f"{len(info.all_skus)} SKUs: available + reserved + shipped = the units of their"
        f" {counted} acknowledged restocks (each key once), none reserved",
        "{n} SKUs break stock conservation or cannot be judged",
    )


def _levels(row: StockRow) -> str:
    return f"available {row.available} reserved {row.reserved} shipped {row.shipped}"


def shipped_matches_orders(info: RunInfo, facts: Facts) -> Check:
    ordered: Counter[str] = Counter()
    for order in facts.orders:
        if order.status == OrderStatus.SHIPPED:
            ordered.update(order.items)
    rows = {s.sku: s for s in facts.stock}
    shipped = {sku: rows[sku].shipped if sku in rows else 0 for sku in info.all_skus}
    offending = [
        f"{sku} shipped {n}, SHIPPED orders hold {ordered[sku]}"
        for sku, n in shipped.items()
        if n != ordered[sku]
    ]
    return _check(
        "3 shipped matches orders",
        offending,
        f"shipped per SKU = the SHIPPED orders' quantities ({sum(ordered.values())} units)",
        "{n} SKUs whose shipped count differs from the SHIPPED orders",
    )


def services_agree(facts: Facts) -> Check:
    shipments: defaultdict[str, list[str]] = defaultdict(list)
    for s in facts.shipments:
        shipments[s.order_id].append(s.status)
    reservations: defaultdict[str, list[str]] = defaultdict(list)
    for r in facts.reservations:
        reservations[r.order_id].append(r.status)
    status = {o.order_id: o.status for o in facts.orders}
    offending = [
        f"{order_id} {st} {disagreement}"
        for order_id, st in status.items()
        for disagreement in _disagreements(
            st, shipments.get(order_id, []), reservations.get(order_id, [])
        )
    ]
    offending += [
        f"{order_id} DISPATCHED shipment for no order"
        for order_id, sh in shipments.items()
        if order_id not in status and ShipmentStatus.DISPATCHED in sh
    ]
    offending += [
        f"{row.sku} available {row.available}, the order service's catalog says"
        f" {facts.catalog.get(row.sku, 'nothing')}"
        for row in facts.stock
        if facts.catalog.get(row.sku) != row.available
    ]
    return _check(
        "4 services agree",
        offending,
        "every SHIPPED order has one DISPATCHED shipment and a SHIPPED reservation; no other"
        " order has a dispatched or live shipment or a held reservation; the order service's"
        " catalog shows each SKU's available stock as inventory holds it",
        "{n} disagreements between order, inventory and shipping",
    )


def _disagreements(status: str, shipments: list[str], reservations: list[str]) -> list[str]:
    """What inventory's and shipping's rows of one order say against its status."""
    dispatched = shipments.count(ShipmentStatus.DISPATCHED)
    if status == OrderStatus.SHIPPED:
        found = [] if dispatched == 1 else [f"with {dispatched} DISPATCHED shipments"]
        if reservations != [ReservationStatus.SHIPPED]:
            found.append(f"with reservation {reservations or 'none'}")
        return found
    found = ["with a DISPATCHED shipment"] if dispatched else []
    if status in (OrderStatus.CANCELLED, OrderStatus.REJECTED):
        if ReservationStatus.RESERVED in reservations:
            found.append("still holds a RESERVED reservation")
        if any(s in LIVE_SHIPMENT for s in shipments):
            found.append(f"with a live shipment {shipments}")
    return found


def one_order_per_key(facts: Facts, journal: list[JournalEntry]) -> Check:
    """The journal's half of "one order per key" (the database's is its UNIQUE constraint):
    every answer for a key names one order, and that order carries the key."""
    answers: defaultdict[str, set[str]] = defaultdict(set)
    for e in _accepted(journal):
        if e.key is not None and (o := _order_id(e.order_id)):
            answers[e.key].add(o)
    key_of = {o.order_id: o.idempotency_key for o in facts.orders}
    offending = [f"key {k}: answers {sorted(ids)}" for k, ids in answers.items() if len(ids) > 1]
    offending += [
        f"key {k}: answered {o}, which has key {key_of[o]}"
        for k, ids in answers.items()
        for o in ids
        if o in key_of and key_of[o] != k
    ]
    return _check(
        "5 one order per key",
        offending,
        f"{len(answers)} keys accepted: every answer for a key names one order, which has it",
        "{n} Idempotency-Keys answered with two orders or with another key's order",
    )


def _last_records(records: Iterable[Record]) -> dict[Stream, Record]:
    """Each stream's record with the highest sequence: its last event on the topic."""
    last: dict[Stream, Record] = {}
    for r in records:
        stream = (r.source, r.aggregate_type, r.aggregate_id)
        if stream not in last or r.sequence > last[stream].sequence:
            last[stream] = r
    return last


def _name(stream: Stream) -> str:
    return "/".join(stream)


def published(facts: Facts) -> Check:
    """Each producer's own count of a stream (``outbox_sequences``) against the topic: an
    event committed and never published leaves the producer ahead, even the last one of
    its stream, which leaves no gap."""
    last = {s: r.sequence for s, r in _last_records(facts.records).items()}
    offending = [
        f"{_name(s)}: its producer counted #{facts.produced.get(s, 0)}, the topic's last is"
        f" #{last.get(s, 0)}"
        for s in sorted(last.keys() | facts.produced.keys())
        if facts.produced.get(s, 0) != last.get(s, 0)
    ]
    offending += [f"{s} outbox {n}" for s, n in sorted(facts.outbox.items()) if n]
    offending += [f"{s} debounce pending {n}" for s, n in sorted(facts.pending.items()) if n]
    return _check(
        "6 published",
        offending,
        f"{len(last)} streams: each producer's last sequence is the last on its topic; none"
        " of the run's events left in an outbox or held for debounce",
        "{n} streams or events not on the topics as their producers counted them",
    )


def dead_letters_are_poison(facts: Facts, injected: list[Injected]) -> Check:
    expected = {(s, i.key) for i in injected if i.kind == "poison" for s in i.expect_letters}
    in_table = {(letter.service, letter.key or "") for letter in facts.letters}
    on_topic = {(r.service, r.key or "") for r in facts.dlq}
    offending = [
        *(f"missing from {s}'s dead_letters: {k}" for s, k in sorted(expected - in_table)),
        *(f"missing from {s}.dlq: {k}" for s, k in sorted(expected - on_topic)),
        *(f"unexpected {s}:{k}" for s, k in sorted((in_table | on_topic) - expected)),
    ]
    return _check(
        "7 dead letters = poison",
        offending,
        f"the {len(expected)} expected dead letters, in the tables and on the topics, and no other",
        "{n} dead letters missing or unexpected",
    )


def sequences(info: RunInfo, facts: Facts) -> Check:
    streams: defaultdict[Stream, defaultdict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in facts.records:
        streams[(r.source, r.aggregate_type, r.aggregate_id)][r.sequence].add(r.event_id)
    offending: list[str] = []
    for stream, seen in sorted(streams.items()):
        missing = sorted(set(range(1, max(seen) + 1)) - seen.keys())
        if missing:
            offending.append(f"{_name(stream)} gap at {_ranges(missing)}")
        offending += [
            f"{_name(stream)} #{n}: {len(ids)} event ids"
            for n, ids in sorted(seen.items())
            if len(ids) > 1
        ]
    offending += [
        f"undecodable {u.topic}[{u.partition}]@{u.offset} key {u.key}"
        for u in facts.undecodable
        if not _poison(info, u.key)
    ]
    positions = _positions_off(facts)
    offending += positions.offending
    offending += [f"{s} parked {n}" for s, n in sorted(facts.parked.items()) if n]
    offending += [f"{g} lag {n}" for g, n in sorted(facts.lag.items()) if n]
    return _check(
        "8 sequences",
        offending,
        f"{len(streams)} streams: sequences 1..n, one event id each; {positions.judged}"
        " consumer positions at their stream's last event; nothing parked; lag 0 in"
        f" {len(facts.lag)} groups",
        "{n} gaps, sequences with two events, consumers off a stream's last event, or events"
        " left behind",
    )


@dataclass(frozen=True)
class _Positions:
    judged: int
    offending: list[str]


def _positions_off(facts: Facts) -> _Positions:
    """Each consumer's stored position in each stream of the topics it reads, against the
    stream's last event there: behind, it never applied an event it was given (an offset
    committed before the event was applied); ahead, it applied one the topic no longer has
    (a lost last event leaves no gap for the sequences to show)."""
    last = _last_records(facts.records)
    applied: defaultdict[str, dict[Stream, int]] = defaultdict(dict)
    for (consumer, source, kind, aggregate), n in facts.applied.items():
        if n:  # 0: a stream locked, nothing applied
            applied[consumer][(source, kind, aggregate)] = n
    judged, offending = 0, []
    for consumer, topics in sorted(facts.reads.items()):
        ends = {s: r.sequence for s, r in last.items() if r.topic in topics}
        mine = applied.get(consumer, {})
        for stream in sorted(ends.keys() | mine.keys()):
            judged += 1
            at, end = mine.get(stream, 0), ends.get(stream, 0)
            if at != end:
                offending.append(
                    f"{consumer} {'behind' if at < end else 'ahead'} on {_name(stream)}:"
                    f" applied #{at}, the topic's last is #{end}"
                )
    return _Positions(judged, offending)


def _ranges(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (" ..." if len(numbers) > 5 else "")


def event_counts(info: RunInfo, facts: Facts) -> Check:
    ids: defaultdict[str, defaultdict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    last_level: dict[str, Record] = {}
    for r in facts.records:
        if r.event_type == STOCK_LEVEL:
            if r.aggregate_id not in last_level or r.sequence > last_level[r.aggregate_id].sequence:
                last_level[r.aggregate_id] = r
        else:
            ids[r.aggregate_id][r.event_type].add(r.event_id)
    offending: list[str] = []
    for order in facts.orders:
        counts = ids.get(order.order_id, defaultdict(set))
        breaks = order_event_breaks(order.status, {t: len(e) for t, e in counts.items()})
        offending += [f"{order.order_id} {order.status}: {b}" for b in breaks]
    rows = {s.sku: s for s in facts.stock}
    for sku in info.all_skus:
        row, last = rows.get(sku), last_level.get(sku)
        if row is not None and (
            last is None or last.levels != (row.available, row.reserved, row.shipped)
        ):
            said = "none" if last is None else f"{last.levels}"
            offending.append(f"{sku}: last StockLevelChanged {said}, stock is {_levels(row)}")
    return _check(
        "9 event counts",
        offending,
        f"the events of {len(facts.orders)} orders and {len(info.all_skus)} SKUs match their state",
        "{n} lost or extra effects",
    )


def order_event_breaks(status: str, counts: Mapping[str, int]) -> list[str]:
    """How one order's events (distinct ids per type) break the rules of the module
    docstring; empty when they hold. A non-terminal order (check 1 reports it) is held
    only to one ``OrderPlaced`` and no type repeated."""
    n: Callable[[str], int] = lambda t: counts.get(t, 0)  # noqa: E731
    breaks = [f"{t} x{c}" for t, c in sorted(counts.items()) if c > 1 and t not in REPEATABLE]
    if n(PLACED) != 1:
        breaks.append(f"{PLACED} x{n(PLACED)}")
    if status not in TERMINAL:
        return breaks  # still on its way: only orders that ended have settled counts
    if n(RESERVED) + n(REJECTED_INV) != 1:
        breaks.append(f"{RESERVED} x{n(RESERVED)} and {REJECTED_INV} x{n(REJECTED_INV)}")
    if n(SCHEDULED) != n(CONFIRMED):
        breaks.append(f"{SCHEDULED} x{n(SCHEDULED)} for {CONFIRMED} x{n(CONFIRMED)}")
    if n(CONFIRMED) > n(RESERVED):
        breaks.append(f"{CONFIRMED} without {RESERVED}")
    exact: dict[str, int] = {}
    match status:
        case OrderStatus.SHIPPED:
            exact = dict.fromkeys(
                [RESERVED, CONFIRMED, SCHEDULED, DISPATCHED, ORDER_SHIPPED, INV_SHIPPED], 1
            )
            exact |= dict.fromkeys(
                [REJECTED_INV, ORDER_REJECTED, ORDER_CANCELLED, SHIPMENT_CANCELLED, RELEASED], 0
            )
        case OrderStatus.REJECTED:
            exact = {REJECTED_INV: 1, ORDER_REJECTED: 1}
            exact |= dict.fromkeys(
                [
                    RESERVED,
                    CONFIRMED,
                    SCHEDULED,
                    DISPATCHED,
                    ORDER_SHIPPED,
                    INV_SHIPPED,
                    CANCEL_REQUESTED,
                    ORDER_CANCELLED,
                    SHIPMENT_CANCELLED,
                    RELEASED,
                ],
                0,
            )
        case OrderStatus.CANCELLED:
            exact = {ORDER_CANCELLED: 1}
            exact |= dict.fromkeys([DISPATCHED, ORDER_SHIPPED, INV_SHIPPED, ORDER_REJECTED], 0)
            if not n(CONFIRMED) == n(CANCEL_REQUESTED) == n(SHIPMENT_CANCELLED):
                breaks.append(
                    f"{CONFIRMED} x{n(CONFIRMED)}, {CANCEL_REQUESTED} x{n(CANCEL_REQUESTED)},"
                    f" {SHIPMENT_CANCELLED} x{n(SHIPMENT_CANCELLED)}"
                )
            if n(RELEASED) != n(RESERVED):
                breaks.append(f"{RELEASED} x{n(RELEASED)} for {RESERVED} x{n(RESERVED)}")
    breaks += [f"{t} x{n(t)}, expected {want}" for t, want in exact.items() if n(t) != want]
    return list(dict.fromkeys(breaks))


def terminal_in_time(info: RunInfo, facts: Facts) -> Check:
    name = "10 terminal in time"
    if info.ended_at is None:
        return Check(name, False, "the run has no ended_at: cannot bound when its orders ended")
    open_ = [o.order_id for o in facts.orders if o.status not in TERMINAL]
    if not facts.orders:
        return Check(name, True, "no orders in the run")
    last = max(facts.orders, key=lambda o: o.updated_at)
    after = last.updated_at - info.ended_at
    healing = (
        "" if info.healed_at is None else f"; healing took {info.healed_at - info.ended_at:.1f} s"
    )
    when = f"{after:.1f} s after" if after >= 0 else f"{-after:.1f} s before"
    figure = (
        f"the last order ended {when} the load stopped (bound {TERMINAL_WITHIN:.0f} s{healing})"
    )
    if open_:
        return Check(name, False, f"{len(open_)} orders never ended; {figure}", open_[:SAMPLE])
    if after > TERMINAL_WITHIN:
        late = sorted(
            (o for o in facts.orders if o.updated_at - info.ended_at > TERMINAL_WITHIN),
            key=lambda o: -o.updated_at,
        )
        return Check(name, False, figure, [o.order_id for o in late][:SAMPLE])
    return Check(name, True, figure)


# --- history: the journal against the end --------------------------------------------------


def _journal_of(journal: list[JournalEntry], op: str) -> defaultdict[str, list[JournalEntry]]:
    """Order id -> its entries of ``op``, in the order sent."""
    found: defaultdict[str, list[JournalEntry]] = defaultdict(list)
    for e in sorted(journal, key=lambda e: e.t):
        if e.op == op and (o := _order_id(e.order_id)):
            found[o].append(e)
    return found


def cancels_honoured(facts: Facts, journal: list[JournalEntry]) -> Check:
    """A cancel answered ``CANCELLED`` ends cancelled with its stock released; answered
    ``CANCELLING``, it ends ``CANCELLED`` (shipping cancelled the shipment) or ``SHIPPED`` (the
    dispatch won: the shipment left, the reservation shipped); refused with 409 (too late),
    it ends ``SHIPPED`` or ``REJECTED``. A 202 with any other status is no answer the API
    documents for a cancel."""
    orders = {o.order_id: o for o in facts.orders}
    shipments, reservations = _statuses(facts.shipments), _statuses(facts.reservations)
    answered: Counter[str] = Counter()
    offending: list[str] = []
    lost = 0  # answered CANCELLING, then the dispatch won
    for order_id, sent in _journal_of(journal, "cancel").items():
        if (order := orders.get(order_id)) is None:
            continue  # check 1 reports an accepted order missing
        for e in sent:
            if _acked(e):
                said = e.state or "no status"
            elif e.status == 409:
                said = "409"
            else:
                continue  # no answer, or one that changed nothing (404: check 14)
            answered[said] += 1
            if said == OrderStatus.CANCELLING and order.status == OrderStatus.SHIPPED:
                lost += 1
            breaks = _cancel_breaks(said, order.status, shipments[order_id], reservations[order_id])
            offending += [f"{order_id} cancel answered {said} at {e.t:.3f}: {b}" for b in breaks]
    return _check(
        "12 cancels honoured",
        offending,
        f"{sum(answered.values())} cancels answered ({_tally(answered)}), each ended as"
        f" answered ({lost} CANCELLING lost the race to dispatch and ended SHIPPED)",
        "{n} cancels that did not end as answered",
    )


def _statuses(rows: Iterable[ShipmentRow | ReservationRow]) -> defaultdict[str, list[str]]:
    found: defaultdict[str, list[str]] = defaultdict(list)
    for row in rows:
        found[row.order_id].append(row.status)
    return found


def _tally(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"


def _cancel_breaks(
    answer: str, status: str, shipments: list[str], reservations: list[str]
) -> list[str]:
    """How an order's end breaks what its cancel was answered."""
    ends = {
        OrderStatus.CANCELLED: {OrderStatus.CANCELLED},
        OrderStatus.CANCELLING: {OrderStatus.CANCELLED, OrderStatus.SHIPPED},
        "409": {OrderStatus.SHIPPED, OrderStatus.REJECTED},
    }.get(answer)
    if ends is None:
        return ["not an answer a cancel has (CANCELLED or CANCELLING)"]
    if status not in ends:
        return [f"ended {status}"]
    breaks: list[str] = []
    if status == OrderStatus.CANCELLED:
        if any(r in HELD for r in reservations):
            breaks.append(f"its stock not released (reservation {reservations})")
        if any(s in LIVE_SHIPMENT for s in shipments):
            breaks.append(f"with a live shipment {shipments}")
        if answer == OrderStatus.CANCELLING and ShipmentStatus.CANCELLED not in shipments:
            breaks.append(f"shipping did not cancel its shipment ({shipments or 'none'})")
    elif status == OrderStatus.SHIPPED and answer == OrderStatus.CANCELLING:
        if ShipmentStatus.DISPATCHED not in shipments:
            breaks.append(f"ended SHIPPED, its shipment {shipments or 'none'}")
        if reservations != [ReservationStatus.SHIPPED]:
            breaks.append(f"ended SHIPPED, its reservation {reservations or 'none'}")
    return breaks


def addresses_honoured(facts: Facts, journal: list[JournalEntry]) -> Check:
    """A ``SHIPPED`` order shows the address its parcel went to (its DISPATCHED shipment's).
    An address change that must have reached the parcel did: one acknowledged while the order
    was ``PENDING`` (the confirmation, committed after it, carries it to shipping) or more
    than ``ADDRESS_SETTLED`` s before the dispatch. An order that ended otherwise shows its
    last acknowledged change. Where several changes qualify, the last one acknowledged; the
    parcel may also go to a change not yet acknowledged when that one was sent (concurrent,
    or never answered: it may have landed later)."""
    changes = _journal_of(journal, "address")
    parcels = {s.order_id: s for s in facts.shipments if s.status == ShipmentStatus.DISPATCHED}
    offending: list[str] = []
    judged = 0
    for order in facts.orders:
        mine, parcel = changes[order.order_id], parcels.get(order.order_id)
        if order.status == OrderStatus.SHIPPED and parcel is not None:
            if order.address != parcel.address:
                offending.append(
                    f"{order.order_id} SHIPPED showing {_place(order.address)}, its parcel"
                    f" went to {_place(parcel.address)}"
                )
            binding = [e for e in mine if _acked(e) and _settled(e, parcel.updated_at)]
            where, what = parcel.address, "its parcel went to"
        elif order.status in (OrderStatus.CANCELLED, OrderStatus.REJECTED):
            binding = [e for e in mine if _acked(e)]
            where, what = order.address, f"{order.status}, it shows"
        else:
            continue  # check 1 reports it
        if not binding:
            continue
        judged += 1
        last = max(binding, key=lambda e: e.answered_at)
        if where not in {address_key(e.address) for e in mine if _may_follow(e, last)}:
            offending.append(
                f"{order.order_id} {what} {_place(where)}, not {_place(address_key(last.address))}"
                f" acknowledged at {last.answered_at:.3f} ({last.state}) nor a later change"
            )
    return _check(
        "13 addresses honoured",
        offending,
        f"every SHIPPED order shows its parcel's address; {judged} orders kept their binding"
        f" address change (acknowledged while PENDING or over {ADDRESS_SETTLED:.0f} s before"
        " dispatch; of an order that did not ship, the last acknowledged)",
        "{n} orders showing or shipped to an address other than the one acknowledged",
    )


def _acked(e: JournalEntry) -> bool:
    return 200 <= e.status < 300


def _settled(change: JournalEntry, dispatched_at: float) -> bool:
    """Whether an acknowledged change must have reached the parcel."""
    return (
        change.state == OrderStatus.PENDING or change.answered_at + ADDRESS_SETTLED < dispatched_at
    )


def _may_follow(change: JournalEntry, last: JournalEntry) -> bool:
    """Whether ``change`` may have been applied after ``last``: not refused, and not
    acknowledged before ``last`` was sent."""
    if change is last:
        return True
    if _acked(change):
        return change.answered_at >= last.t
    return _unclear(change.status)


def _place(address: AddressKey | None) -> str:
    return "no address" if address is None else f"'{address[0]}, {address[1]}'"


@dataclass(frozen=True)
class Seen:
    """An order as one answer (or, sent and answered at infinity, its final row) showed it."""

    what: str
    sent: float
    answered: float
    state: str | None
    version: int | None


def observations(facts: Facts, journal: list[JournalEntry]) -> defaultdict[str, list[Seen]]:
    """Order id -> every state of it its customer was shown, and its final row last."""
    seen: defaultdict[str, list[Seen]] = defaultdict(list)
    for e in sorted(journal, key=lambda e: e.t):
        if e.op != "restock" and _acked(e) and (o := _order_id(e.order_id)):
            seen[o].append(Seen(f"{e.op} at {e.t:.3f}", e.t, e.answered_at, e.state, e.version))
    inf = float("inf")
    for row in facts.orders:
        seen[row.order_id].append(Seen("the final row", inf, inf, row.status, row.version))
    return seen


def _shown_before(
    facts: Facts, journal: list[JournalEntry], part: Literal["state", "version"]
) -> Iterator[tuple[str, Seen, list[Seen]]]:
    """Each answer (and final row) showing ``part`` of an order, with every answer showing it
    that its customer had before sending the request (none for the first)."""
    for order_id, seen in observations(facts, journal).items():
        for b in seen:
            shown = [
                a
                for a in seen
                if a is not b and a.answered <= b.sent and getattr(a, part) is not None
            ]
            if shown and getattr(b, part) is not None:
                yield order_id, b, shown


def reads_your_writes(facts: Facts, journal: list[JournalEntry]) -> Check:
    """No answer about an order shows a version older than one its customer was shown
    before asking (by a write's answer or a read), and the final row is not older than any
    answer; no order acknowledged before a request is answered 404 by it."""
    offending: list[str] = []
    judged = 0
    for order_id, b, shown in _shown_before(facts, journal, "version"):
        judged += 1
        newest = max(shown, key=lambda a: a.version or 0)
        if (b.version or 0) < (newest.version or 0):
            offending.append(
                f"{order_id} {b.what} showed version {b.version} after {newest.what} had shown"
                f" {newest.version}"
            )
    placed: dict[str, float] = {}
    for e in _accepted(journal):
        if o := _order_id(e.order_id):
            placed[o] = min(placed.get(o, e.answered_at), e.answered_at)
    offending += [
        f"{o} {e.op} at {e.t:.3f} answered 404, the order acknowledged at {placed[o]:.3f}"
        for e in journal
        if e.status == 404 and (o := _order_id(e.order_id)) in placed and e.t >= placed[o]
    ]
    return _check(
        "14 read your writes",
        offending,
        f"{judged} answers and final rows, none older than what their customer was shown"
        " before asking; no 404 for an acknowledged order",
        "{n} answers older than one their customer had already been shown",
    )


def status_never_backwards(facts: Facts, journal: list[JournalEntry]) -> Check:
    """Across what one customer was shown of an order, and its final row last, each status
    is reachable from every one shown before (``REACHABLE``): CANCELLING may end SHIPPED,
    CONFIRMED never becomes REJECTED, a terminal status never changes."""
    offending: list[str] = []
    judged = 0
    for order_id, b, shown in _shown_before(facts, journal, "state"):
        judged += 1
        back = [a for a in shown if b.state not in REACHABLE.get(a.state or "", ())]
        if back:
            offending.append(
                f"{order_id} {b.what} showed {b.state} after {back[-1].what} had shown"
                f" {back[-1].state}"
            )
    return _check(
        "15 status never backwards",
        offending,
        f"{judged} answers and final rows, each a status reachable from every one shown before",
        "{n} orders shown going backwards",
    )


def restock_answers(journal: list[JournalEntry]) -> Check:
    """Every restock answer counts the restocks acknowledged before it was first sent, and
    none not yet sent when it came: its total (available + reserved + shipped, which only a
    restock changes) lies between the two. A retry's answer may repeat the first one's."""
    offending: list[str] = []
    judged = 0
    for sku, mine in sorted(restocks(journal).items()):
        if any(r.quantity is None for r in mine):
            continue  # check 2 names it inconclusive
        for r in mine:
            for e in r.answers:
                if e.total is None:
                    continue
                judged += 1
                floor = sum(
                    o.quantity or 0
                    for o in mine
                    if o is r or (o.acked_at is not None and o.acked_at <= r.sent_at)
                )
                ceiling = sum(o.quantity or 0 for o in mine if o.sent_at <= e.answered_at)
                if not floor <= e.total <= ceiling:
                    offending.append(
                        f"{sku} restock {r.key} answered a total of {e.total} at"
                        f" {e.answered_at:.3f}, not within {floor}..{ceiling}"
                    )
    return _check(
        "16 restock answers",
        offending,
        f"{judged} restock answers, each counting every restock acknowledged before it and"
        " none sent after it",
        "{n} restock answers missing an acknowledged restock or counting one not yet sent",
    )


# --- the pitfalls: applied in order, storms debounced -----------------------------------------

# Consumers are named after their services (consumer_sequences.consumer), as producers are
# (an envelope's source).
ORDER_SERVICE, INVENTORY, SHIPPING = "order", "inventory", "shipping"
ORDER_KIND = spec_of(OrderPlaced).aggregate_type
SHIPMENT_KIND = spec_of(ShipmentScheduled).aggregate_type
STOCK_KIND = spec_of(StockLevelChanged).aggregate_type


def applied_in_order(info: RunInfo, facts: Facts) -> Check:
    """No consumer applied an event of a stream before an earlier one of the same stream.

    The services keep no record of the order in which a consumer applied a stream's events:
    ``consumer_sequences`` holds the highest sequence applied (never lowered), and a dedup
    row's ``processed_at`` is its transaction's start, one time for every event of a group
    commit, where most reorderings happen. So the check reads an out-of-order application
    from the states only it leaves, each impossible for a consumer that applies a stream in
    sequence order (the sequence check parks an early event until those before it are in):

    - inventory has applied an order's ``OrderCancelled`` (its position is past it) and still
      holds the order's stock: the cancel came first and found nothing to release, and the
      ``OrderPlaced`` after it reserved for good;
    - shipping cancelled a shipment it never scheduled (``ShipmentCancelled`` and no
      ``ShipmentScheduled`` on its stream, no address on its row) of an order confirmed before
      the cancellation was requested: the request came first, then the confirmation found a
      shipment and was ignored;
    - the order service's catalog shows a SKU's available stock as an earlier
      ``StockLevelChanged`` said, not as the last one, which it has applied: the older level
      came last.

    The detail counts the streams with records on more than one partition: what publishing
    without a key (``PITFALL_UNKEYED``) provokes, and what the sequence check absorbs."""
    streams: defaultdict[Stream, dict[int, Record]] = defaultdict(dict)
    partitions: defaultdict[Stream, set[tuple[str, int]]] = defaultdict(set)
    for r in facts.records:
        stream = (r.source, r.aggregate_type, r.aggregate_id)
        streams[stream].setdefault(r.sequence, r)
        partitions[stream].add((r.topic, r.partition))
    reservations = _statuses(facts.reservations)
    shipments = {s.order_id: s for s in facts.shipments}
    offending: list[str] = []
    judged = 0
    for stream, events in sorted(streams.items()):
        source, kind, order_id = stream
        if (source, kind) != (ORDER_SERVICE, ORDER_KIND):
            continue
        placed, cancelled = _first(events, PLACED), _first(events, ORDER_CANCELLED)
        if placed is not None and cancelled is not None:
            judged += 1
            held = [s for s in reservations[order_id] if s in HELD]
            if held and facts.applied.get((INVENTORY, *stream), 0) >= cancelled:
                offending.append(
                    f"inventory applied {_name(stream)} #{cancelled} {ORDER_CANCELLED} before"
                    f" #{placed} {PLACED}: the cancel found nothing to release, the"
                    f" reservation taken after it is {held[0]}"
                )
        confirmed, requested = _first(events, CONFIRMED), _first(events, CANCEL_REQUESTED)
        if confirmed is not None and requested is not None and confirmed < requested:
            judged += 1
            shipment = streams.get((SHIPPING, SHIPMENT_KIND, order_id), {})
            told = {r.event_type for r in shipment.values()}
            row = shipments.get(order_id)
            if (
                SHIPMENT_CANCELLED in told
                and SCHEDULED not in told
                and row is not None
                and row.status == ShipmentStatus.CANCELLED
                and row.address is None
                and facts.applied.get((SHIPPING, *stream), 0) >= requested
            ):
                offending.append(
                    f"shipping applied {_name(stream)} #{requested} {CANCEL_REQUESTED} before"
                    f" #{confirmed} {CONFIRMED}: it cancelled a shipment it never scheduled and"
                    " ignored the confirmation"
                )
    for sku in info.all_skus:
        stream = (INVENTORY, STOCK_KIND, sku)
        levels = {n: r.levels for n, r in streams.get(stream, {}).items() if r.levels}
        shown = facts.catalog.get(sku)
        if not levels or shown is None:
            continue
        judged += 1
        last = max(levels)
        said = levels[last][0]
        older = [n for n, (available, _, _) in levels.items() if n < last and available == shown]
        if shown != said and older and facts.applied.get((ORDER_SERVICE, *stream), 0) >= last:
            offending.append(
                f"order applied {_name(stream)} #{max(older)} (available {shown}) after #{last}"
                f" (available {said}): its catalog shows the older level"
            )
    spread = sum(1 for found in partitions.values() if len(found) > 1)
    return _check(
        "17 applied in order",
        offending,
        f"{judged} consumer states that an event applied before an earlier one would leave"
        " (a cancel before its order, a cancellation before its confirmation, a stock level"
        f" after a newer one), none left; {spread} of {len(streams)} streams on more than"
        " one partition",
        "{n} events applied before an earlier one of their stream",
    )


def _first(events: Mapping[int, Record], event_type: str) -> int | None:
    """The lowest sequence of a stream's events of ``event_type``."""
    return min((n for n, r in events.items() if r.event_type == event_type), default=None)


def storms_debounced(info: RunInfo, facts: Facts, journal: list[JournalEntry]) -> Check:
    """The debounce contract held for the storms the customers and the restocker make.

    - Addresses: no order has more ``OrderShippingAddressChanged`` (distinct events) than its
      customer's acknowledged changes can make bursts (:func:`address_bursts`). An order with
      a change that got no clear answer (none, or a 5xx: it may have landed at any later
      moment) is not judged.
    - Stock: no two ``StockLevelChanged`` of one SKU, one after the other in its stream, were
      stamped (``occurred_at``) less than ``STOCK_SPACING`` apart. With debounce they are a
      poll of the emitter apart and more (see ``STOCK_SPACING``); without, every movement
      crosses Kafka, and the movements one consumer transaction makes (two orders reserving
      one SKU, a dispatcher's batch shipping it) are stamped microseconds apart."""
    addressed: defaultdict[str, set[str]] = defaultdict(set)
    levels: defaultdict[str, dict[int, Record]] = defaultdict(dict)
    for r in facts.records:
        if r.event_type == ADDRESS_CHANGED:
            addressed[r.aggregate_id].add(r.event_id)
        elif r.event_type == STOCK_LEVEL:
            levels[r.aggregate_id].setdefault(r.sequence, r)
    changes = _journal_of(journal, "address")
    offending: list[str] = []
    judged = unclear = 0
    for order_id in sorted(addressed.keys() | changes.keys()):
        sent = changes.get(order_id, [])
        if any(_unclear(e.status) for e in sent):
            unclear += 1
            continue
        judged += 1
        acked = [e for e in sent if _acked(e)]
        bursts, events = address_bursts(acked), len(addressed.get(order_id, ()))
        if events > bursts:
            offending.append(
                f"{order_id} {events} {ADDRESS_CHANGED} for {len(acked)} acknowledged address"
                f" changes, at most {bursts} burst(s)"
            )
    pairs = 0
    for sku in info.all_skus:
        mine = levels.get(sku, {})
        for a, b in pairwise(mine[n] for n in sorted(mine)):
            pairs += 1
            if b.occurred_at - a.occurred_at < STOCK_SPACING:
                offending.append(
                    f"{sku} {STOCK_LEVEL} #{a.sequence} and #{b.sequence} stamped"
                    f" {b.occurred_at - a.occurred_at:.3f} s apart"
                )
    return _check(
        "18 storms debounced",
        offending,
        f"{judged} orders' {ADDRESS_CHANGED} within their bursts of acknowledged changes"
        f" ({unclear} with an unanswered change not judged); {pairs} consecutive"
        f" {STOCK_LEVEL} of {len(info.all_skus)} SKUs at least {STOCK_SPACING:.2f} s apart",
        "{n} address bursts or stock movements that crossed Kafka as more than one event",
    )


def address_bursts(changes: Iterable[JournalEntry]) -> int:
    """The most ``OrderShippingAddressChanged`` one order's acknowledged address changes can
    make. A customer sends a change once the one before is answered, and a change is made
    between its sending and its answer. The debounce emits a held event once it has been
    quiet ``DEBOUNCE_QUIET`` s, or once its first change is ``DEBOUNCE_MAX_WAIT`` s old; a
    change made after the emission starts the next event. So the changes before change j
    can have gone out without it only if j was answered more than the quiet period after
    change j-1 was sent, or more than the maximum wait after its burst's first change was
    sent (``CLOCK_SLACK`` less, for the clocks). A burst is closed at the first change where
    it may be: no split the debounce could have made yields more bursts."""
    bursts = 0
    first: JournalEntry | None = None
    previous: JournalEntry | None = None
    for e in sorted(changes, key=lambda e: e.t):
        if (
            first is None
            or previous is None
            or e.answered_at - previous.t > DEBOUNCE_QUIET - CLOCK_SLACK
            or e.answered_at - first.t > DEBOUNCE_MAX_WAIT - CLOCK_SLACK
        ):
            bursts += 1
            first = e
        previous = e
    return bursts


# --- running ---------------------------------------------------------------------------------


async def check(run: RunDir) -> Verdict:
    """Gather, judge and write ``verdict.json`` into the run folder."""
    facts = await gather(run)
    verdict = judge(run.info(), facts, run.journal(), run.injected())
    run.write_verdict(verdict)
    return verdict


def render(verdict: Verdict, shown: int = 10) -> str:
    lines = []
    for c in verdict.checks:
        lines.append(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
        lines += [f"        {o}" for o in c.offending[:shown]]
    lines.append(
        "verdict: " + ("every invariant holds" if verdict.ok else f"FAILED {verdict.failed()}")
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load.checker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, help="the run folder (reports/load/<run_id>)")
    args = parser.parse_args(argv)
    verdict = asyncio.run(check(RunDir(args.run)))
    print(render(verdict))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
