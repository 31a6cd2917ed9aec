from datetime import UTC, datetime
from uuid import uuid4

import pytest

from order.domain.order import (
    AddressChangeTooLateError,
    CancelTooLateError,
    Order,
    OrderStatus,
    ShippingAddressEdited,
)
from shared.contracts.catalog import (
    Address,
    OrderCancellationRequested,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderShippingAddressChanged,
)
from shared.writing.aggregate import DomainError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


def placed(*lines: tuple[str, int]) -> Order:
    items = tuple(OrderLine(sku=s, quantity=q) for s, q in lines or [("SKU-1", 2)])
    return Order.place(uuid4(), "cust-1", items, ADDRESS, correlation_id="c", now=NOW)


def status_of(order: Order) -> OrderStatus:
    return order.status  # a call, so the type checker does not keep the earlier narrowing


def event_types(order: Order) -> list[type]:
    return [type(e) for e in order.events]


def test_placing_an_order_makes_it_pending_and_records_order_placed() -> None:
    order = placed()
    assert order.status is OrderStatus.PENDING
    assert order.version == 1
    assert event_types(order) == [OrderPlaced]


def test_the_same_sku_on_two_lines_is_refused() -> None:
    with pytest.raises(DomainError, match="one line"):
        placed(("A", 1), ("A", 2))


def test_a_reservation_confirms_and_a_dispatch_ships_it() -> None:
    order = placed()
    order.confirm(NOW)
    order.shipment_dispatched(NOW)
    assert order.status is OrderStatus.SHIPPED
    assert order.version == 3
    assert event_types(order) == [OrderPlaced, OrderConfirmed, OrderShipped]


def test_a_rejection_is_terminal_and_a_late_confirmation_changes_nothing() -> None:
    order = placed()
    order.reject("no stock", NOW)
    order.confirm(NOW)
    assert order.status is OrderStatus.REJECTED
    assert event_types(order) == [OrderPlaced, OrderRejected]


def test_cancelling_a_pending_order_cancels_it_at_once_and_ignores_a_late_reservation() -> None:
    order = placed()
    order.cancel(NOW)
    order.confirm(NOW)
    assert order.status is OrderStatus.CANCELLED
    assert event_types(order) == [OrderPlaced, OrderCancelled]


def test_cancelling_a_confirmed_order_waits_for_shipping_to_agree() -> None:
    order = placed()
    order.confirm(NOW)
    order.cancel(NOW)
    assert order.status is OrderStatus.CANCELLING
    order.shipment_cancelled(NOW)
    assert status_of(order) is OrderStatus.CANCELLED
    assert event_types(order)[-2:] == [OrderCancellationRequested, OrderCancelled]


def test_when_dispatch_wins_the_race_a_cancelling_order_ships() -> None:
    order = placed()
    order.confirm(NOW)
    order.cancel(NOW)
    order.shipment_dispatched(NOW)
    assert order.status is OrderStatus.SHIPPED


def test_cancelling_twice_records_one_request() -> None:
    order = placed()
    order.confirm(NOW)
    order.cancel(NOW)
    order.cancel(NOW)
    assert event_types(order).count(OrderCancellationRequested) == 1


@pytest.mark.parametrize("finish", ["ship", "reject"])
def test_cancelling_a_shipped_or_rejected_order_is_too_late(finish: str) -> None:
    order = placed()
    if finish == "ship":
        order.confirm(NOW)
        order.shipment_dispatched(NOW)
    else:
        order.reject("no stock", NOW)
    with pytest.raises(CancelTooLateError):
        order.cancel(NOW)


def test_a_dispatch_for_a_cancelled_order_is_an_inconsistency_not_silently_accepted() -> None:
    order = placed()
    order.cancel(NOW)
    with pytest.raises(DomainError):
        order.shipment_dispatched(NOW)


ELSEWHERE = ADDRESS.model_copy(update={"line1": "2 Elm St"})


def test_an_address_edit_is_a_domain_event_published_as_order_shipping_address_changed() -> None:
    order = placed()
    order.confirm(NOW)
    order.change_shipping_address(ELSEWHERE, NOW)
    order.change_shipping_address(ELSEWHERE, NOW)  # the same again: nothing
    (edit,) = [e for e in order.events if isinstance(e, ShippingAddressEdited)]
    assert edit.published_as() == OrderShippingAddressChanged(
        order_id=order.order_id, shipping_address=ELSEWHERE
    )
    assert (order.shipping_address, order.version) == (ELSEWHERE, 3)


@pytest.mark.parametrize("end", ["ship", "reject", "cancel"])
def test_an_address_edit_after_the_order_ended_is_refused(end: str) -> None:
    order = placed()
    if end == "ship":
        order.confirm(NOW)
        order.shipment_dispatched(NOW)
    elif end == "reject":
        order.reject("no stock", NOW)
    else:
        order.cancel(NOW)
    order.events.clear()
    with pytest.raises(AddressChangeTooLateError):
        order.change_shipping_address(ELSEWHERE, NOW)
    assert (order.shipping_address, order.events) == (ADDRESS, [])


def test_the_order_ends_showing_the_address_the_parcel_went_to() -> None:
    order = placed()
    order.confirm(NOW)
    order.change_shipping_address(ELSEWHERE, NOW)  # reached shipping after dispatch
    order.shipment_dispatched(NOW, ADDRESS)
    assert (order.status, order.shipping_address) == (OrderStatus.SHIPPED, ADDRESS)


def test_a_dispatch_that_does_not_say_where_keeps_the_order_s_address() -> None:
    order = placed()
    order.confirm(NOW)
    order.change_shipping_address(ELSEWHERE, NOW)
    order.shipment_dispatched(NOW, None)  # a v1 ShipmentDispatched
    assert order.shipping_address == ELSEWHERE
