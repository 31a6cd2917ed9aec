"""Shipments: scheduled on confirmation, dispatched when due, cancel versus dispatch."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from shared.contracts.catalog import (
    Address,
    OrderCancellationRequested,
    OrderConfirmed,
    OrderLine,
    OrderShippingAddressChanged,
)
from shared.observability.correlation import correlated
from shared.testing.fakes import InMemoryState
from shipping.dispatcher import SHIPMENTS_SET_ASIDE, DispatchAlarm, dispatch_due_shipments
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.handlers import (
    ShippingDeps,
    when_order_cancellation_requested_cancel_shipment,
    when_order_confirmed_schedule_shipment,
    when_order_shipping_address_changed_redirect_shipment,
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


class RecordingAlarm(DispatchAlarm):
    """An alarm that keeps the dispatch times it was rung for."""

    def __init__(self) -> None:
        super().__init__()
        self.rung: list[datetime] = []

    def ring_at(self, due: datetime) -> None:
        self.rung.append(due)
        super().ring_at(due)


def deps(
    delay: timedelta = timedelta(seconds=10), alarm: DispatchAlarm | None = None
) -> ShippingDeps:
    return ShippingDeps(dispatch_delay=delay, alarm=alarm or DispatchAlarm())


async def confirm(
    state: InMemoryState, order_id: object, given: ShippingDeps | None = None
) -> None:
    """Shipping hears that the order was confirmed."""
    async with FakeShippingUnitOfWork(state, "shipping") as uow:
        await when_order_confirmed_schedule_shipment(confirmed(order_id), uow, given or deps())
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
    await confirm(state, order_id)
    await confirm(state, order_id)
    assert await dispatch(state) == 0  # not due yet
    make_due(state)
    assert await dispatch(state) == 1
    assert await dispatch(state) == 0
    assert state.tables["shipments"][order_id].status is ShipmentStatus.DISPATCHED
    assert types(state) == ["ShipmentScheduled", "ShipmentDispatched"]


async def test_a_cancel_before_dispatch_wins_and_the_shipment_never_leaves() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await confirm(state, order_id)
    await run(state, when_order_cancellation_requested_cancel_shipment,
              OrderCancellationRequested(order_id=order_id))  # fmt: skip
    make_due(state)
    assert await dispatch(state) == 0
    assert types(state) == ["ShipmentScheduled", "ShipmentCancelled"]


async def test_a_cancel_after_dispatch_loses_and_changes_nothing() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await confirm(state, order_id)
    make_due(state)
    await dispatch(state)
    await run(state, when_order_cancellation_requested_cancel_shipment,
              OrderCancellationRequested(order_id=order_id))  # fmt: skip
    assert state.tables["shipments"][order_id].status is ShipmentStatus.DISPATCHED
    assert types(state) == ["ShipmentScheduled", "ShipmentDispatched"]


ELSEWHERE = ADDRESS.model_copy(update={"line1": "2 Elm St"})


def address_changed(order_id: object) -> OrderShippingAddressChanged:
    return OrderShippingAddressChanged(order_id=order_id, shipping_address=ELSEWHERE)


async def test_the_shipment_keeps_the_address_of_the_confirmation_and_applies_a_change() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await confirm(state, order_id)
    assert state.tables["shipments"][order_id].shipping_address == ADDRESS
    await run(
        state, when_order_shipping_address_changed_redirect_shipment, address_changed(order_id)
    )
    assert state.tables["shipments"][order_id].shipping_address == ELSEWHERE
    make_due(state)
    await dispatch(state)
    dispatched = state.outbox.envelopes[-1]
    assert dispatched.event_type == "ShipmentDispatched"
    assert dispatched.payload["shipping_address"] == ELSEWHERE.model_dump()


async def test_a_change_after_dispatch_is_not_applied_and_the_dispatch_said_where_it_went() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await confirm(state, order_id)
    make_due(state)
    await dispatch(state)
    await run(
        state, when_order_shipping_address_changed_redirect_shipment, address_changed(order_id)
    )
    assert state.tables["shipments"][order_id].shipping_address == ADDRESS
    assert state.outbox.envelopes[-1].payload["shipping_address"] == ADDRESS.model_dump()
    assert types(state) == ["ShipmentScheduled", "ShipmentDispatched"]


async def test_a_change_before_the_confirmation_reached_shipping_is_a_no_op() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await run(
        state, when_order_shipping_address_changed_redirect_shipment, address_changed(order_id)
    )
    assert state.tables.get("shipments", {}) == {}
    assert types(state) == []


async def test_the_alarm_wakes_the_dispatcher_when_a_shipment_it_scheduled_is_due() -> None:
    alarm = DispatchAlarm()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await alarm.wait(0.05)  # nothing rung: the poll interval
    assert loop.time() - started >= 0.05
    alarm.ring_at(datetime.now(UTC) + timedelta(seconds=60))
    alarm.ring_at(datetime.now(UTC) + timedelta(milliseconds=50))  # the earliest wins
    started = loop.time()
    await alarm.wait(30)
    assert 0.04 <= loop.time() - started < 5
    waiting = asyncio.create_task(alarm.wait(30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    alarm.ring_at(datetime.now(UTC))  # rung while it sleeps
    await asyncio.wait_for(waiting, 5)


async def test_scheduling_a_shipment_rings_the_alarm_only_once_committed() -> None:
    alarm = RecordingAlarm()
    state = InMemoryState()
    async with FakeShippingUnitOfWork(state, "shipping") as uow:
        await when_order_confirmed_schedule_shipment(confirmed(uuid4()), uow, deps(alarm=alarm))
        # no commit: rolled back
    assert alarm.rung == []
    order_id = uuid4()
    await confirm(state, order_id, deps(alarm=alarm))
    assert alarm.rung == [state.tables["shipments"][order_id].dispatch_at]


async def test_a_shipment_is_scheduled_the_given_delay_after_the_confirmation() -> None:
    state = InMemoryState()
    order_id = uuid4()
    await confirm(state, order_id, deps(timedelta(minutes=5)))
    shipment = state.tables["shipments"][order_id]
    assert shipment.dispatch_at - shipment.created_at == timedelta(minutes=5)


async def test_one_pass_dispatches_each_shipment_within_its_own_flow() -> None:
    state = InMemoryState()
    flows = {uuid4(): "flow-a", uuid4(): "flow-b"}
    for order_id, flow in flows.items():
        with correlated(flow, "confirmed"):
            await confirm(state, order_id)
    make_due(state)
    assert await dispatch(state) == 2  # one pass, one transaction
    dispatched = {
        e.aggregate_id: e.correlation_id
        for e in state.outbox.envelopes
        if e.event_type == "ShipmentDispatched"
    }
    assert dispatched == {str(order_id): flow for order_id, flow in flows.items()}


class Unshippable(Shipment):
    """A shipment the dispatcher cannot dispatch (why does not matter here)."""

    def dispatch(self, now: datetime) -> None:
        raise RuntimeError("the carrier refuses this parcel")


async def test_a_shipment_that_cannot_be_dispatched_is_set_aside_and_the_ones_behind_it_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = InMemoryState()
    good = [uuid4(), uuid4()]
    for order_id in good:
        await confirm(state, order_id)
    make_due(state)
    bad = uuid4()
    earliest = datetime.now(UTC) - timedelta(minutes=1)  # first in line
    state.tables["shipments"][bad] = Unshippable(
        bad, uuid4(), ShipmentStatus.SCHEDULED, earliest, earliest, earliest, ADDRESS
    )
    state.tables["shipment_contexts"][bad] = ("flow-of-the-bad-one", {})
    set_aside = SHIPMENTS_SET_ASIDE.labels("shipping")._value.get()

    with caplog.at_level(logging.ERROR, logger="shipping.dispatcher"):
        assert await dispatch(state) == 2

    shipments = state.tables["shipments"]
    assert [shipments[order_id].status for order_id in good] == [ShipmentStatus.DISPATCHED] * 2
    assert shipments[bad].status is ShipmentStatus.SCHEDULED
    assert shipments[bad].dispatch_error == "RuntimeError: the carrier refuses this parcel"
    dispatched = {
        e.aggregate_id for e in state.outbox.envelopes if e.event_type == "ShipmentDispatched"
    }
    assert dispatched == {str(order_id) for order_id in good}
    assert SHIPMENTS_SET_ASIDE.labels("shipping")._value.get() == set_aside + 1
    (error,) = caplog.records
    assert f"shipment of order {bad} set aside" in error.getMessage()
    assert "correlation_id=flow-of-the-bad-one" in error.getMessage()
    assert await dispatch(state) == 0  # the dispatcher no longer takes it
    assert state.tables["shipments"][bad].status is ShipmentStatus.SCHEDULED
