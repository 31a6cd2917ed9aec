"""Shipments: scheduled on confirmation, dispatched when due, cancel versus dispatch."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from shared.contracts.catalog import (
    Address,
    OrderCancellationRequested,
    OrderConfirmed,
    OrderLine,
)
from shared.testing.fakes import InMemoryState
from shipping.domain.shipment import ShipmentStatus
from shipping.handlers import (
    dispatch_due_shipments,
    when_order_cancellation_requested_cancel_shipment,
    when_order_confirmed_schedule_shipment,
)
from shipping.testing import FakeShippingUnitOfWork

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
LINES = (OrderLine(sku="A", quantity=1),)


def confirmed(order_id: object) -> OrderConfirmed:
    return OrderConfirmed(order_id=order_id, items=LINES, shipping_address=ADDRESS)


async def run(state: InMemoryState, handler, event) -> None:  # type: ignore[no-untyped-def]
    async with FakeShippingUnitOfWork(state, "shipping") as uow:
        await handler(event, uow)
        await uow.commit()


async def dispatch(state: InMemoryState) -> int:
    return await dispatch_due_shipments(lambda: FakeShippingUnitOfWork(state, "shipping"))


def make_due(state: InMemoryState) -> None:
    for shipment in state.tables["shipments"].values():
        shipment.dispatch_at = datetime.now(UTC) - timedelta(seconds=1)


def types(state: InMemoryState) -> list[str]:
    return [e.event_type for e in state.outbox.envelopes]


async def test_a_confirmed_order_is_scheduled_once_and_dispatched_when_due() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await run(state, when_order_confirmed_schedule_shipment, confirmed(order_id))
    await run(state, when_order_confirmed_schedule_shipment, confirmed(order_id))
    assert await dispatch(state) == 0  # not due yet
    make_due(state)
    assert await dispatch(state) == 1
    assert await dispatch(state) == 0
    assert state.tables["shipments"][order_id].status is ShipmentStatus.DISPATCHED
    assert types(state) == ["ShipmentScheduled", "ShipmentDispatched"]


async def test_a_cancel_before_dispatch_wins_and_the_shipment_never_leaves() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await run(state, when_order_confirmed_schedule_shipment, confirmed(order_id))
    await run(state, when_order_cancellation_requested_cancel_shipment,
              OrderCancellationRequested(order_id=order_id))  # fmt: skip
    make_due(state)
    assert await dispatch(state) == 0
    assert types(state) == ["ShipmentScheduled", "ShipmentCancelled"]


async def test_a_cancel_after_dispatch_loses_and_changes_nothing() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await run(state, when_order_confirmed_schedule_shipment, confirmed(order_id))
    make_due(state)
    await dispatch(state)
    await run(state, when_order_cancellation_requested_cancel_shipment,
              OrderCancellationRequested(order_id=order_id))  # fmt: skip
    assert state.tables["shipments"][order_id].status is ShipmentStatus.DISPATCHED
    assert types(state) == ["ShipmentScheduled", "ShipmentDispatched"]
