"""Stock and reservations: all lines or none, stock conserved, over the fake unit of work."""

from uuid import uuid4

import pytest

from inventory.domain.stock import Reservation, ReservationStatus, Stock
from inventory.handlers import (
    when_order_cancelled_release_stock,
    when_order_placed_reserve_stock,
    when_shipment_dispatched_ship_stock,
)
from inventory.testing import FakeInventoryUnitOfWork
from shared.contracts import spec_of
from shared.contracts.catalog import (
    Address,
    InventoryRejected,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
    ShipmentDispatched,
    Shortfall,
)
from shared.pitfalls.no_debounce import published_at_once
from shared.testing.fakes import InMemoryState, emit_pending
from shared.writing.aggregate import DomainError

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


def lines(**quantities: int) -> tuple[OrderLine, ...]:
    return tuple(OrderLine(sku=s, quantity=q) for s, q in quantities.items())


def test_a_reservation_takes_every_line_when_all_are_available() -> None:
    stock = {"A": Stock("A", available=5), "B": Stock("B", available=1)}
    reservation = Reservation.reserve(uuid4(), lines(A=2, B=1), stock)
    assert reservation.status is ReservationStatus.RESERVED
    assert (stock["A"].available, stock["A"].reserved) == (3, 2)
    assert (stock["B"].available, stock["B"].reserved) == (0, 1)


def test_a_reservation_takes_nothing_when_one_line_is_short() -> None:
    stock = {"A": Stock("A", available=5), "B": Stock("B", available=1)}
    reservation = Reservation.reserve(uuid4(), lines(A=2, B=2), stock)
    assert reservation.status is ReservationStatus.REJECTED
    assert [type(e).__name__ for e in reservation.events] == ["InventoryRejected"]
    rejected = reservation.events[0]
    assert isinstance(rejected, InventoryRejected)
    assert "B: 2 wanted, 1 available" in rejected.reason
    assert (stock["A"].available, stock["A"].reserved) == (5, 0)
    assert stock["A"].events == []


def test_an_unknown_sku_rejects_the_reservation() -> None:
    reservation = Reservation.reserve(uuid4(), lines(Z=1), {})
    assert reservation.status is ReservationStatus.REJECTED


def test_a_rejection_lists_each_short_line_as_a_v2_shortfall() -> None:
    stock = {"A": Stock("A", available=5), "B": Stock("B", available=1)}
    reservation = Reservation.reserve(uuid4(), lines(A=2, B=2, Z=1), stock)
    [event] = reservation.events
    assert isinstance(event, InventoryRejected)
    assert spec_of(event).schema_version == 2
    assert event.shortfalls == (
        Shortfall(sku="B", wanted=2, available=1),
        Shortfall(sku="Z", wanted=1, available=None),
    )
    assert event.reason == "B: 2 wanted, 1 available; unknown SKU Z"


def test_stock_cannot_be_released_or_shipped_beyond_what_is_reserved() -> None:
    stock = Stock("A", available=1, reserved=1)
    with pytest.raises(DomainError):
        stock.release(2)
    with pytest.raises(DomainError):
        stock.ship(2)


async def run(state: InMemoryState, handler, event) -> None:  # type: ignore[no-untyped-def]
    async with FakeInventoryUnitOfWork(state, "inventory") as uow:
        await handler(event, uow)
        await uow.commit()


async def seed(state: InMemoryState, **available: int) -> None:
    async with FakeInventoryUnitOfWork(state, "inventory") as uow:
        for sku, quantity in available.items():
            (await uow.stock.get_or_create(sku)).restock(quantity)
        await uow.commit()


def stock_of(state: InMemoryState, sku: str) -> tuple[int, int, int]:
    s = state.tables["stock"][sku]
    return s.available, s.reserved, s.shipped


async def test_placed_then_dispatched_moves_stock_from_available_to_shipped() -> None:
    state = InMemoryState()
    await seed(state, A=10)
    order_id = uuid4()
    await run(state, when_order_placed_reserve_stock,
              OrderPlaced(order_id=order_id, customer_id="c", items=lines(A=3),
                          shipping_address=ADDRESS))  # fmt: skip
    assert stock_of(state, "A") == (7, 3, 0)
    await run(state, when_shipment_dispatched_ship_stock,
              ShipmentDispatched(order_id=order_id, shipment_id=uuid4()))  # fmt: skip
    assert stock_of(state, "A") == (7, 0, 3)
    types = [e.event_type for e in state.outbox.envelopes]
    assert types.count("InventoryReserved") == 1
    assert types.count("InventoryShipped") == 1


async def test_a_cancelled_order_gives_its_stock_back_once() -> None:
    state = InMemoryState()
    await seed(state, A=10)
    order_id = uuid4()
    await run(state, when_order_placed_reserve_stock,
              OrderPlaced(order_id=order_id, customer_id="c", items=lines(A=3),
                          shipping_address=ADDRESS))  # fmt: skip
    cancelled = OrderCancelled(order_id=order_id, reason="customer")
    await run(state, when_order_cancelled_release_stock, cancelled)
    await run(state, when_order_cancelled_release_stock, cancelled)
    assert stock_of(state, "A") == (10, 0, 0)


async def test_an_order_placed_twice_reserves_once() -> None:
    state = InMemoryState()
    await seed(state, A=10)
    event = OrderPlaced(order_id=uuid4(), customer_id="c", items=lines(A=3),
                        shipping_address=ADDRESS)  # fmt: skip
    await run(state, when_order_placed_reserve_stock, event)
    await run(state, when_order_placed_reserve_stock, event)
    assert stock_of(state, "A") == (7, 3, 0)


async def test_stock_changes_are_held_and_published_once_as_the_last_level_keyed_by_sku() -> None:
    state = InMemoryState()
    await seed(state, A=10)
    await seed(state, A=7)
    assert state.outbox.envelopes == []  # held for debounce, not published
    assert await emit_pending(state, "inventory") == 1
    (envelope,) = state.outbox.envelopes
    assert (envelope.event_type, envelope.aggregate_id, envelope.sequence) == (
        "StockLevelChanged",
        "A",
        1,
    )
    assert envelope.payload["available"] == 7


async def test_without_debounce_every_stock_change_is_published() -> None:
    state = InMemoryState()
    for level in (10, 7):
        async with FakeInventoryUnitOfWork(state, "inventory", coarse=published_at_once) as uow:
            (await uow.stock.get_or_create("A")).restock(level)
            await uow.commit()
    assert [e.payload["available"] for e in state.outbox.envelopes] == [10, 7]
