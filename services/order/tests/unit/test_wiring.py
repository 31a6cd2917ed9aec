"""The order service as the consumer and the launcher see it: its routing table, its
composition root, and events delivered through the routing table (not to a handler)."""

from uuid import uuid4

import pytest

from order.bootstrap import MIGRATIONS, bootstrap
from order.commands import place_order
from order.domain.order import OrderStatus
from order.handlers import router
from order.postgres import PostgresOrderUnitOfWork
from order.settings import Settings
from order.testing import FakeOrderUnitOfWork
from shared.consuming.processing import Delivery, EventProcessor, Outcome, PermanentError
from shared.contracts.catalog import (
    InventoryReserved,
    OrderLine,
    ShipmentDispatched,
    StockLevelChanged,
)
from shared.testing.fakes import InMemoryDelivery, InMemoryState

from .test_commands_and_handlers import command


def test_the_routing_table_names_each_reaction() -> None:
    assert router.describe().splitlines() == [
        "inventory  InventoryRejected            -> when_inventory_rejected_reject_order",
        "inventory  InventoryReserved            -> when_inventory_reserved_confirm_order",
        "shipping   ShipmentCancelled            -> when_shipment_cancelled_cancel_order",
        "shipping   ShipmentDispatched           -> when_shipment_dispatched_mark_order_shipped",
        "stock      StockLevelChanged            -> when_stock_level_changed_update_catalog",
    ]
    assert router.topics == ["inventory", "shipping", "stock"]


def test_bootstrap_wires_the_routing_table_the_postgres_unit_of_work_and_the_migrations() -> None:
    definition = bootstrap(
        Settings(database_url="postgresql://nowhere/order", admin_token="unit-test-token")
    )
    assert definition.router is router
    assert definition.new_uow is PostgresOrderUnitOfWork
    assert definition.migrations == MIGRATIONS
    assert (MIGRATIONS / "env.py").is_file()
    assert definition.settings.service_name == "order"


async def test_a_reservation_delivered_through_the_routing_table_confirms_the_order_once() -> None:
    state = InMemoryState()
    delivery = InMemoryDelivery(router, lambda: FakeOrderUnitOfWork(state, "order"))
    stock = StockLevelChanged(sku="SKU-1", available=10, reserved=0, shipped=0)
    assert await delivery.deliver(stock, source="inventory", key="SKU-1") is Outcome.APPLIED
    async with FakeOrderUnitOfWork(state, "order") as uow:
        order = await place_order(command(), uow)

    reserved = delivery.envelope(
        InventoryReserved(order_id=order.order_id, items=(OrderLine(sku="SKU-1", quantity=2),)),
        source="inventory",
        aggregate_id=str(order.order_id),
    )
    assert await delivery.deliver(reserved) is Outcome.APPLIED
    assert await delivery.deliver(reserved) is Outcome.DUPLICATE
    assert state.tables["orders"][order.order_id].order.status is OrderStatus.CONFIRMED
    assert [e.event_type for e in state.outbox.envelopes] == ["OrderPlaced", "OrderConfirmed"]


async def test_an_event_for_an_order_this_service_does_not_have_is_permanent() -> None:
    state = InMemoryState()
    delivery = InMemoryDelivery(router, lambda: FakeOrderUnitOfWork(state, "order"))
    order_id = uuid4()
    reserved = InventoryReserved(order_id=order_id, items=(OrderLine(sku="A", quantity=1),))
    with pytest.raises(PermanentError, match=f"no order {order_id}"):
        await delivery.deliver(reserved, source="inventory", key=str(order_id))


async def test_two_events_of_one_order_in_one_batch_each_see_what_the_other_wrote() -> None:
    state = InMemoryState()
    delivery = InMemoryDelivery(router, lambda: FakeOrderUnitOfWork(state, "order"))
    stock = StockLevelChanged(sku="SKU-1", available=10, reserved=0, shipped=0)
    await delivery.deliver(stock, source="inventory", key="SKU-1")
    async with FakeOrderUnitOfWork(state, "order") as uow:
        order = await place_order(command(), uow)
    key = str(order.order_id)
    reserved = delivery.envelope(
        InventoryReserved(order_id=order.order_id, items=(OrderLine(sku="SKU-1", quantity=2),)),
        source="inventory",
        aggregate_id=key,
    )
    dispatched = delivery.envelope(
        ShipmentDispatched(order_id=order.order_id, shipment_id=uuid4()),
        source="shipping",
        aggregate_id=key,
    )
    processor = EventProcessor(router, lambda: FakeOrderUnitOfWork(state, "order"))
    outcomes = await processor.process_batch([Delivery(reserved), Delivery(dispatched)])
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert state.tables["orders"][order.order_id].order.status is OrderStatus.SHIPPED
    _, confirmed, shipped = state.outbox.envelopes
    assert (confirmed.event_type, confirmed.sequence) == ("OrderConfirmed", 2)
    assert (shipped.event_type, shipped.sequence) == ("OrderShipped", 3)
