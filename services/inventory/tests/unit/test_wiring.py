"""The inventory service as the consumer and the launcher see it: its routing table, its
composition root, and events delivered through the routing table (not to a handler)."""

from uuid import uuid4

import pytest

from inventory.bootstrap import MIGRATIONS, bootstrap
from inventory.handlers import router
from inventory.postgres import PostgresInventoryUnitOfWork
from inventory.settings import Settings
from inventory.testing import FakeInventoryUnitOfWork
from shared.consuming.processing import Outcome, PermanentError
from shared.contracts.catalog import Address, OrderLine, OrderPlaced, ShipmentDispatched
from shared.testing.fakes import InMemoryDelivery, InMemoryState

from .test_reservations import seed, stock_of

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


def test_the_routing_table_names_each_reaction() -> None:
    assert router.describe().splitlines() == [
        "orders     OrderCancelled               -> when_order_cancelled_release_stock",
        "orders     OrderPlaced                  -> when_order_placed_reserve_stock",
        "shipping   ShipmentDispatched           -> when_shipment_dispatched_ship_stock",
    ]
    assert router.topics == ["orders", "shipping"]


def test_bootstrap_wires_the_routing_table_the_postgres_unit_of_work_and_the_migrations() -> None:
    definition = bootstrap(
        Settings(database_url="postgresql://nowhere/inventory", admin_token="unit-test-token")
    )
    assert definition.router is router
    assert definition.new_uow is PostgresInventoryUnitOfWork
    assert definition.migrations == MIGRATIONS
    assert (MIGRATIONS / "env.py").is_file()
    assert definition.settings.service_name == "inventory"


async def test_an_order_placed_delivered_twice_reserves_once() -> None:
    state = InMemoryState()
    await seed(state, A=5)
    delivery = InMemoryDelivery(router, lambda: FakeInventoryUnitOfWork(state, "inventory"))
    order_id = uuid4()
    placed = delivery.envelope(
        OrderPlaced(
            order_id=order_id,
            customer_id="c",
            items=(OrderLine(sku="A", quantity=2),),
            shipping_address=ADDRESS,
        ),
        source="order",
        aggregate_id=str(order_id),
    )
    assert await delivery.deliver(placed) is Outcome.APPLIED
    assert await delivery.deliver(placed) is Outcome.DUPLICATE
    assert stock_of(state, "A") == (3, 2, 0)


async def test_a_dispatch_with_no_reservation_is_dead_lettered_not_retried() -> None:
    state = InMemoryState()
    delivery = InMemoryDelivery(router, lambda: FakeInventoryUnitOfWork(state, "inventory"))
    order_id = uuid4()
    dispatched = ShipmentDispatched(order_id=order_id, shipment_id=uuid4())
    with pytest.raises(PermanentError, match="UnknownReservationError"):
        await delivery.deliver(dispatched, source="shipping", key=str(order_id))
