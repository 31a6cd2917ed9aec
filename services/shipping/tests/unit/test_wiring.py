"""The shipping service as the consumer and the launcher see it: its routing table, its
composition root, and events delivered through the routing table (not to a handler)."""

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID, uuid4

from shared.consuming.middleware import compose
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts.catalog import OrderCancellationRequested
from shared.service.runtime import Runtime
from shared.testing.fakes import InMemoryDelivery, InMemoryState
from shipping.bootstrap import MIGRATIONS, bootstrap
from shipping.dispatcher import DispatchAlarm
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.handlers import ShippingDeps, router_for
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.repository import ShippingUnitOfWork
from shipping.settings import Settings
from shipping.testing import FakeShippingUnitOfWork, InMemoryShipmentRepository

from .test_shipments import confirmed, dispatch, make_due, types

router = router_for(ShippingDeps(dispatch_delay=timedelta(seconds=10), alarm=DispatchAlarm()))


def test_the_routing_table_names_each_reaction() -> None:
    assert router.describe() == (
        "orders     OrderCancellationRequested   -> "
        "when_order_cancellation_requested_cancel_shipment\n"
        "orders     OrderConfirmed               -> when_order_confirmed_schedule_shipment\n"
        "orders     OrderShippingAddressChanged  -> "
        "when_order_shipping_address_changed_redirect_shipment"
    )
    assert router.topics == ["orders"]


def settings(**overrides: Any) -> Settings:
    return Settings(
        database_url="postgresql://nowhere/shipping", admin_token="unit-test-token", **overrides
    )


def test_bootstrap_wires_the_routing_table_the_dispatcher_and_the_migrations() -> None:
    definition = bootstrap(settings())
    assert definition.router.describe() == router.describe()
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


async def test_the_handlers_take_the_delay_of_the_settings_and_ring_the_dispatchers_alarm() -> None:
    definition = bootstrap(settings(dispatch_delay_seconds=0.2, dispatch_poll_interval_seconds=60))
    state = InMemoryState()

    def new_uow() -> ShippingUnitOfWork:
        return FakeShippingUnitOfWork(state, "shipping")

    runtime = cast("Runtime[Any]", SimpleNamespace(new_uow=new_uow))  # all the dispatcher uses
    dispatcher = asyncio.ensure_future(definition.workers["dispatcher"](runtime))
    try:
        await asyncio.sleep(0.05)  # its first pass found nothing due: it sleeps up to 60 s
        delivery = InMemoryDelivery(definition.router, new_uow)  # type: ignore[arg-type]
        order_id = uuid4()
        await delivery.deliver(
            delivery.envelope(confirmed(order_id), source="order", aggregate_id=str(order_id))
        )
        scheduled = state.tables["shipments"][order_id]
        assert scheduled.dispatch_at - scheduled.created_at == timedelta(seconds=0.2)
        async with asyncio.timeout(5):  # rung by the handler: dispatched when due, not in 60 s
            while state.tables["shipments"][order_id].status is not ShipmentStatus.DISPATCHED:
                await asyncio.sleep(0.02)
    finally:
        dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher


def looking_up(state: InMemoryState, lookups: list[list[UUID]]) -> Callable[[], ShippingUnitOfWork]:
    """Units of work on ``state`` whose shipments note the order ids of every lookup."""

    class Shipments(InMemoryShipmentRepository):
        async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Shipment]:
            lookups.append(list(order_ids))
            return await super()._get_all(order_ids, lock=lock)

    class Uow(FakeShippingUnitOfWork):
        async def _begin(self) -> None:
            await super()._begin()
            self.shipments = Shipments(self)

    return lambda: Uow(state, "shipping")


async def test_a_batch_looks_its_shipments_up_at_once_and_each_new_one_keeps_its_flow() -> None:
    state = InMemoryState()
    lookups: list[list[UUID]] = []
    envelopes = InMemoryDelivery(router, lambda: FakeShippingUnitOfWork(state, "shipping"))
    a, b = sorted([uuid4(), uuid4()])
    batch = [
        envelopes.envelope(confirmed(b), source="order", aggregate_id=str(b), correlation_id="b"),
        envelopes.envelope(confirmed(a), source="order", aggregate_id=str(a), correlation_id="a"),
        envelopes.envelope(
            OrderCancellationRequested(order_id=a),
            source="order",
            aggregate_id=str(a),
            correlation_id="a-cancelled",
        ),
    ]
    processor = EventProcessor(router, looking_up(state, lookups))

    # Each event applied in its own correlation, as the consumer's middleware does.
    outcomes = await processor.process_batch([Delivery(e, "orders") for e in batch], compose([]))

    assert outcomes == [Outcome.APPLIED] * 3
    assert lookups == [[a, b]]  # the batch preparer's: the handlers found them in hand
    shipments = state.tables["shipments"]
    assert (shipments[a].status, shipments[b].status) == (
        ShipmentStatus.CANCELLED,
        ShipmentStatus.SCHEDULED,
    )
    assert {i: flow for i, (flow, _) in state.tables["shipment_contexts"].items()} == {
        a: "a",
        b: "b",
    }
    make_due(state)
    assert await dispatch(state) == 1
    written = [(e.event_type, e.aggregate_id, e.correlation_id) for e in state.outbox.envelopes]
    assert written == [
        ("ShipmentScheduled", str(b), "b"),
        ("ShipmentScheduled", str(a), "a"),
        ("ShipmentCancelled", str(a), "a-cancelled"),
        ("ShipmentDispatched", str(b), "b"),  # in the flow of b's confirmation
    ]
