"""The shipment repository: one set of cases, fake and real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from shared.contracts.catalog import Address
from shared.observability.correlation import correlated
from shared.testing.backends import units
from shipping.bootstrap import MIGRATIONS
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.repository import ShippingUnitOfWork
from shipping.testing import FakeShippingUnitOfWork

NewUow = Callable[[], ShippingUnitOfWork]
NOW = datetime.now(UTC)
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
ELSEWHERE = ADDRESS.model_copy(update={"line1": "2 Elm St"})


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def new_uow(request: pytest.FixtureRequest) -> AsyncIterator[NewUow]:
    async with units(
        request.param, FakeShippingUnitOfWork, PostgresShippingUnitOfWork, MIGRATIONS, "shipping"
    ) as factory:
        yield factory


async def schedule(new_uow: NewUow, delay: timedelta) -> Shipment:
    with correlated("corr-of-the-flow", None):
        return await _schedule(new_uow, delay)


async def _schedule(new_uow: NewUow, delay: timedelta) -> Shipment:
    async with new_uow() as uow:
        shipment = Shipment.schedule(uuid4(), ADDRESS, now=NOW, dispatch_at=NOW + delay)
        uow.shipments.track(shipment)
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
        assert shipment is not None
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
