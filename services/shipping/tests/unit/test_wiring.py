"""The shipping service as the consumer and the launcher see it: its routing table, its
composition root, and events delivered through the routing table (not to a handler)."""

from uuid import uuid4

from shared.consuming.processing import Outcome
from shared.contracts.catalog import OrderCancellationRequested
from shared.testing.fakes import InMemoryDelivery, InMemoryState
from shipping.bootstrap import MIGRATIONS, bootstrap
from shipping.domain.shipment import ShipmentStatus
from shipping.handlers import router
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.settings import Settings
from shipping.testing import FakeShippingUnitOfWork

from .test_shipments import confirmed, types


def test_the_routing_table_names_each_reaction() -> None:
    assert router.describe() == (
        "orders     OrderCancellationRequested   -> "
        "when_order_cancellation_requested_cancel_shipment\n"
        "orders     OrderConfirmed               -> when_order_confirmed_schedule_shipment\n"
        "orders     OrderShippingAddressChanged  -> "
        "when_order_shipping_address_changed_redirect_shipment"
    )
    assert router.topics == ["orders"]


def test_bootstrap_wires_the_routing_table_the_dispatcher_and_the_migrations() -> None:
    definition = bootstrap(
        Settings(database_url="postgresql://nowhere/shipping", admin_token="unit-test-token")
    )
    assert definition.router is router
    assert definition.new_uow is PostgresShippingUnitOfWork
    assert definition.migrations == MIGRATIONS
    assert (MIGRATIONS / "env.py").is_file()
    assert set(definition.workers) == {"dispatcher"}


async def test_a_cancel_that_arrives_before_its_confirmation_waits_for_it() -> None:
    state = InMemoryState()
    delivery = InMemoryDelivery(router, lambda: FakeShippingUnitOfWork(state, "shipping"))
    order_id = uuid4()
    confirmation = delivery.envelope(
        confirmed(order_id), source="order", aggregate_id=str(order_id)
    )
    cancel = delivery.envelope(
        OrderCancellationRequested(order_id=order_id), source="order", aggregate_id=str(order_id)
    )
    assert await delivery.deliver(cancel) is Outcome.PARKED
    assert "shipments" not in state.tables or order_id not in state.tables["shipments"]
    assert await delivery.deliver(confirmation) is Outcome.APPLIED  # and the cancel after it
    assert state.tables["shipments"][order_id].status is ShipmentStatus.CANCELLED
    assert types(state) == ["ShipmentScheduled", "ShipmentCancelled"]
