"""The shipment repository: one set of cases, fake and real Postgres.

Each case's units of work count what their shipment repository asks of storage: the
statements on PostgreSQL, the calls of the fake's storage methods (each one statement in the
adapter), so that a case says how many round trips a transaction takes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID, uuid4

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from shared.contracts.catalog import Address
from shared.observability.correlation import correlated
from shared.testing.backends import units
from shared.testing.statements import CountingConnection
from shipping.bootstrap import MIGRATIONS
from shipping.dispatcher import dispatch_due_shipments
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.postgres import PostgresShipmentRepository, PostgresShippingUnitOfWork
from shipping.repository import DueShipment, Flow, ShippingUnitOfWork
from shipping.testing import FakeShippingUnitOfWork, InMemoryShipmentRepository

NewUow = Callable[[], ShippingUnitOfWork]
NOW = datetime.now(UTC)
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
ELSEWHERE = ADDRESS.model_copy(update={"line1": "2 Elm St"})


class CountedPostgresShipments(PostgresShipmentRepository):
    def __init__(self, uow: ShippingUnitOfWork, conn: asyncpg.Connection) -> None:
        self._counting = CountingConnection(conn)
        super().__init__(uow, cast(asyncpg.Connection, self._counting))

    @property
    def statements(self) -> int:
        return self._counting.statements


class CountedPostgres(PostgresShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = CountedPostgresShipments(self, self.conn)


class CountedInMemoryShipments(InMemoryShipmentRepository):
    statements = 0

    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Shipment]:
        self.statements += 1
        return await super()._get_all(order_ids, lock=lock)

    async def _due(self, now: datetime, limit: int) -> list[DueShipment]:
        self.statements += 1
        return await super()._due(now, limit)

    async def _write_all(
        self, added: Sequence[tuple[Shipment, Flow]], changed: Sequence[Shipment]
    ) -> None:
        self.statements += 1
        await super()._write_all(added, changed)

    async def set_aside(self, order_id: UUID, reason: str) -> str | None:
        self.statements += 1
        return await super().set_aside(order_id, reason)


class CountedInMemory(FakeShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = CountedInMemoryShipments(self)


def statements(uow: ShippingUnitOfWork) -> int:
    """What the transaction's shipment repository asked of storage so far."""
    assert isinstance(uow.shipments, CountedInMemoryShipments | CountedPostgresShipments)
    return uow.shipments.statements


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def new_uow(request: pytest.FixtureRequest) -> AsyncIterator[NewUow]:
    async with units(
        request.param, CountedInMemory, CountedPostgres, MIGRATIONS, "shipping"
    ) as factory:
        yield factory


async def schedule(new_uow: NewUow, delay: timedelta) -> Shipment:
    with correlated("corr-of-the-flow", None):
        return await _schedule(new_uow, delay)


async def _schedule(new_uow: NewUow, delay: timedelta) -> Shipment:
    async with new_uow() as uow:
        shipment = Shipment.schedule(uuid4(), ADDRESS, now=NOW, dispatch_at=NOW + delay)
        uow.shipments.add(shipment)
        await uow.commit()
    return shipment


async def test_a_scheduled_shipment_reads_back(new_uow: NewUow) -> None:
    shipment = await schedule(new_uow, timedelta(minutes=5))
    async with new_uow() as uow:
        loaded = await uow.shipments.get(shipment.order_id)
    assert loaded is not None
    assert (loaded.shipment_id, loaded.status) == (shipment.shipment_id, ShipmentStatus.SCHEDULED)
    assert loaded.dispatch_at == shipment.dispatch_at
    assert loaded.shipping_address == ADDRESS


async def test_a_redirect_before_dispatch_is_saved_and_one_after_is_not(new_uow: NewUow) -> None:
    shipment = await schedule(new_uow, timedelta(minutes=5))
    async with new_uow() as uow:
        loaded = await uow.shipments.get(shipment.order_id)
        assert loaded is not None
        assert loaded.redirect(ELSEWHERE, NOW)
        await uow.commit()
    async with new_uow() as uow:
        loaded = await uow.shipments.get(shipment.order_id)
        assert loaded is not None
        assert loaded.shipping_address == ELSEWHERE
        loaded.dispatch(NOW)
        await uow.commit()
    async with new_uow() as uow:
        loaded = await uow.shipments.get(shipment.order_id)
        assert loaded is not None
        assert not loaded.redirect(ADDRESS, NOW)
        await uow.commit()
    async with new_uow() as uow:
        stored = await uow.shipments.read(shipment.order_id)
    assert stored is not None
    assert (stored.status, stored.shipping_address) == (ShipmentStatus.DISPATCHED, ELSEWHERE)


async def test_only_scheduled_shipments_whose_time_has_come_are_due(new_uow: NewUow) -> None:
    due = await schedule(new_uow, timedelta(seconds=-5))
    await schedule(new_uow, timedelta(minutes=5))
    async with new_uow() as uow:
        found = await uow.shipments.due(NOW, 10)
        assert [(s.order_id, s.correlation_id) for s in found] == [
            (due.order_id, "corr-of-the-flow")
        ]
        shipment = await uow.shipments.get(due.order_id)
        assert shipment is found[0].shipment  # in hand: no second statement
        assert statements(uow) == 1
        shipment.dispatch(NOW)
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.shipments.due(NOW, 10) == []
        dispatched = await uow.shipments.get(due.order_id)
    assert dispatched is not None
    assert dispatched.status is ShipmentStatus.DISPATCHED


@pytest.mark.integration
async def test_two_dispatchers_split_the_due_shipments_between_them() -> None:
    """Postgres only (the fake has no row locks): ``due`` locks what it returns and skips
    what another transaction holds, so a second dispatcher neither waits nor repeats."""
    async with units(
        "postgres", FakeShippingUnitOfWork, PostgresShippingUnitOfWork, MIGRATIONS, "shipping"
    ) as new_uow:
        scheduled = {(await schedule(new_uow, timedelta(seconds=-5))).order_id for _ in "ab"}
        async with new_uow() as one, new_uow() as other:
            mine = await one.shipments.due(NOW, 1)
            theirs = await other.shipments.due(NOW, 10)
    assert len(mine) == 1
    assert {s.order_id for s in theirs} == scheduled - {mine[0].order_id}


async def test_get_hands_out_one_object_per_shipment_and_transaction_read_once(
    new_uow: NewUow,
) -> None:
    scheduled = await schedule(new_uow, timedelta(minutes=5))
    unknown = uuid4()
    async with new_uow() as uow:
        first = await uow.shipments.get(scheduled.order_id)
        assert first is not None
        assert await uow.shipments.get(scheduled.order_id) is first
        assert await uow.shipments.get(unknown) is None
        assert await uow.shipments.get(unknown) is None  # its absence is remembered too
        assert statements(uow) == 2


async def test_load_all_loads_what_is_not_in_hand_in_one_statement(new_uow: NewUow) -> None:
    a, b, c = [await schedule(new_uow, timedelta(minutes=5)) for _ in "abc"]
    unknown = uuid4()
    async with new_uow() as uow:
        in_hand = await uow.shipments.get(a.order_id)
        loaded = await uow.shipments.load_all([c.order_id, unknown, a.order_id, b.order_id])
        assert statements(uow) == 2
        assert [s.order_id for s in loaded] == [c.order_id, a.order_id, b.order_id]
        assert loaded[1] is in_hand
        for shipment in (b, c):
            assert await uow.shipments.get(shipment.order_id) in loaded
        assert await uow.shipments.get(unknown) is None
        assert statements(uow) == 2


async def test_new_and_changed_shipments_are_written_once_each_in_one_statement(
    new_uow: NewUow,
) -> None:
    redirected, cancelled = [await schedule(new_uow, timedelta(minutes=5)) for _ in "ab"]
    new = [Shipment.schedule(uuid4(), ADDRESS, now=NOW, dispatch_at=NOW) for _ in "cd"]
    async with new_uow() as uow:
        shipments = await uow.shipments.load_all([redirected.order_id, cancelled.order_id])
        assert statements(uow) == 1
        first, second = shipments
        first.redirect(ADDRESS.model_copy(update={"line1": "3 Oak St"}), NOW)
        await uow.flush()  # as after an event of a batch: the next one changes it again
        first.redirect(ELSEWHERE, NOW)
        second.cancel(NOW)
        for shipment in new:
            uow.shipments.add(shipment)
        await uow.commit()
        assert statements(uow) == 2
    async with new_uow() as uow:
        stored = {
            s.order_id: (s.status, s.shipping_address)
            for s in await uow.shipments.load_all([redirected.order_id, cancelled.order_id])
            + await uow.shipments.load_all(s.order_id for s in new)
        }
    assert stored == {
        redirected.order_id: (ShipmentStatus.SCHEDULED, ELSEWHERE),
        cancelled.order_id: (ShipmentStatus.CANCELLED, ADDRESS),
        **{s.order_id: (ShipmentStatus.SCHEDULED, ADDRESS) for s in new},
    }


@contextmanager
def in_flow(correlation_id: str, trace_id: int) -> Iterator[None]:
    """Under ``correlation_id``, inside a span of the trace ``trace_id``."""
    context = SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with correlated(correlation_id, None), trace.use_span(NonRecordingSpan(context)):
        yield


async def test_each_new_shipment_keeps_the_flow_it_was_added_in_not_that_of_the_commit(
    new_uow: NewUow,
) -> None:
    # As in a consumer's batch: each event's handler adds a shipment in the event's flow,
    # and the transaction commits after the last one, in none of them.
    flows = {uuid4(): ("flow-a", 0xA), uuid4(): ("flow-b", 0xB)}
    async with new_uow() as uow:
        for order_id, (correlation_id, trace_id) in flows.items():
            with in_flow(correlation_id, trace_id):
                uow.shipments.add(Shipment.schedule(order_id, ADDRESS, now=NOW, dispatch_at=NOW))
                await uow.flush()
        with in_flow("flow-of-the-commit", 0xC):
            await uow.commit()
    async with new_uow() as uow:
        due = await uow.shipments.due(NOW, 10)
    assert {
        item.order_id: (item.correlation_id, item.trace_headers["traceparent"].split("-")[1])
        for item in due
    } == {order_id: (corr, f"{trace_id:032x}") for order_id, (corr, trace_id) in flows.items()}


async def test_a_dispatcher_pass_reads_its_due_shipments_and_saves_them_in_two_statements(
    new_uow: NewUow,
) -> None:
    due = {(await schedule(new_uow, timedelta(seconds=-5))).order_id for _ in "abc"}
    opened: list[ShippingUnitOfWork] = []

    def recorded() -> ShippingUnitOfWork:
        opened.append(uow := new_uow())
        return uow

    assert await dispatch_due_shipments(recorded) == 3
    assert [statements(uow) for uow in opened] == [2]
    async with new_uow() as uow:
        assert {s.status for s in await uow.shipments.load_all(due)} == {ShipmentStatus.DISPATCHED}


@pytest.mark.integration
async def test_load_all_locks_the_shipments_it_loads() -> None:
    """Postgres only (the fake has no row locks): a consumer's batch holds its shipments
    until commit, so the dispatcher, which skips what another transaction holds, waits for
    the cancellation in flight instead of dispatching."""
    async with units(
        "postgres", FakeShippingUnitOfWork, PostgresShippingUnitOfWork, MIGRATIONS, "shipping"
    ) as new_uow:
        held, free = [await schedule(new_uow, timedelta(seconds=-5)) for _ in "ab"]
        async with new_uow() as consumer, new_uow() as dispatcher:
            await consumer.shipments.load_all([held.order_id, uuid4()])
            due = await dispatcher.shipments.due(NOW, 10)
    assert [s.order_id for s in due] == [free.order_id]
