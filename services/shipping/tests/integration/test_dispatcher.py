"""The dispatcher against real PostgreSQL: a shipment that cannot be dispatched is set aside
with the reason, and the shipments due after it still go out."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.contracts.catalog import Address
from shared.observability.correlation import correlated
from shared.testing.infra import migrated_pool
from shipping.api import ShipmentView
from shipping.bootstrap import MIGRATIONS
from shipping.dispatcher import dispatch_due_shipments
from shipping.domain.shipment import Shipment
from shipping.postgres import PostgresShippingUnitOfWork

NewUow = Callable[[], PostgresShippingUnitOfWork]
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


async def schedule(new_uow: NewUow, flow: str, minutes_ago: int) -> UUID:
    due_at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    with correlated(flow, None):
        async with new_uow() as uow:
            shipment = Shipment.schedule(uuid4(), ADDRESS, now=due_at, dispatch_at=due_at)
            uow.shipments.add(shipment)
            await uow.commit()
    return shipment.order_id


async def refused_by_the_database(pool: asyncpg.Pool, order_id: UUID) -> str:
    """A row the database will not let go: a trigger refuses its dispatch."""
    await pool.execute(
        f"""
        CREATE FUNCTION refuse_dispatch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.order_id = '{order_id}' AND NEW.status = 'DISPATCHED' THEN
                RAISE EXCEPTION 'the carrier refuses this parcel';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    await pool.execute(
        "CREATE TRIGGER refuse_dispatch BEFORE INSERT OR UPDATE ON shipments"
        " FOR EACH ROW EXECUTE FUNCTION refuse_dispatch()"
    )
    return "RaiseError: the carrier refuses this parcel"


async def that_does_not_load(pool: asyncpg.Pool, order_id: UUID) -> str:
    """A row the current model refuses: an address with no city."""
    address = json.dumps({"line1": "1 Main St", "postal_code": "12345", "country": "US"})
    await pool.execute(
        "UPDATE shipments SET shipping_address = $2 WHERE order_id = $1", order_id, address
    )
    return f"UnreadableShipmentError: shipment of order {order_id} does not load"


@pytest.mark.parametrize("poison", [refused_by_the_database, that_does_not_load])
async def test_a_shipment_that_cannot_be_dispatched_is_set_aside_and_those_behind_it_go(
    pool: asyncpg.Pool, poison: Callable[[asyncpg.Pool, UUID], Awaitable[str]]
) -> None:
    def new_uow() -> PostgresShippingUnitOfWork:
        return PostgresShippingUnitOfWork(pool, "shipping")

    bad = await schedule(new_uow, "flow-of-the-bad-one", minutes_ago=10)  # first in line
    good = [await schedule(new_uow, f"flow-{n}", minutes_ago=5) for n in range(2)]
    reason = await poison(pool, bad)

    assert await dispatch_due_shipments(new_uow) == 2

    rows = {
        r["order_id"]: r
        for r in await pool.fetch("SELECT order_id, status, dispatch_error FROM shipments")
    }
    assert [rows[order_id]["status"] for order_id in good] == ["DISPATCHED", "DISPATCHED"]
    assert rows[bad]["status"] == "SCHEDULED"
    assert rows[bad]["dispatch_error"].startswith(reason)
    dispatched = await pool.fetch(
        "SELECT message_key FROM outbox WHERE headers->>'event_type' = 'ShipmentDispatched'"
    )
    assert sorted(r["message_key"] for r in dispatched) == sorted(str(g) for g in good)
    assert await dispatch_due_shipments(new_uow) == 0  # the dispatcher no longer takes it
    if poison is refused_by_the_database:  # the API shows why it waits
        async with new_uow() as uow:
            view = ShipmentView.model_validate(await uow.shipments.read(bad))
        assert view.dispatch_error == reason
