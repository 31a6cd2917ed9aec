"""The order service's commands and reactions over the fake unit of work."""

from uuid import uuid4

import pytest

from order.commands import IdempotencyConflictError, PlaceOrder, place_order
from order.domain.order import OrderStatus
from order.handlers import (
    UnknownOrderError,
    when_inventory_rejected_reject_order,
    when_inventory_reserved_confirm_order,
    when_stock_level_changed_update_catalog,
)
from order.repository import DuplicateIdempotencyKeyError
from order.testing import FakeOrderUnitOfWork
from shared.contracts import decode_payload
from shared.contracts.catalog import (
    Address,
    InventoryRejected,
    InventoryReserved,
    OrderLine,
    Shortfall,
    StockLevelChanged,
)
from shared.observability.correlation import NoCorrelationError, correlated, correlation_id_var
from shared.testing.fakes import InMemoryState

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
LINES = (OrderLine(sku="SKU-1", quantity=2),)


def uow(state: InMemoryState) -> FakeOrderUnitOfWork:
    return FakeOrderUnitOfWork(state, "order")


def command(key: str | None = None, customer: str = "cust-1") -> PlaceOrder:
    return PlaceOrder(customer, LINES, ADDRESS, key)


async def test_placing_an_order_writes_it_and_its_event_in_one_commit() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        order = await place_order(command(), u)
    assert [e.event_type for e in state.outbox.envelopes] == ["OrderPlaced"]
    envelope = state.outbox.envelopes[0]
    assert envelope.aggregate_id == str(order.order_id)
    assert envelope.sequence == 1


async def test_the_order_and_its_order_placed_carry_the_correlation_in_effect() -> None:
    state = InMemoryState()
    with correlated("corr-of-this-request", "request:1"):
        async with uow(state) as u:
            order = await place_order(command(), u)
    envelope = state.outbox.envelopes[0]
    assert order.correlation_id == "corr-of-this-request"
    assert envelope.correlation_id == "corr-of-this-request"
    assert envelope.causation_id == "request:1"
    assert state.tables["orders"][order.order_id].order.correlation_id == "corr-of-this-request"


async def test_placing_an_order_outside_any_correlation_is_refused_and_writes_nothing() -> None:
    state = InMemoryState()
    token = correlation_id_var.set(None)
    try:
        async with uow(state) as u:
            with pytest.raises(NoCorrelationError):
                await place_order(command(), u)
    finally:
        correlation_id_var.reset(token)
    assert state.outbox.envelopes == []
    assert state.tables.get("orders", {}) == {}


async def test_an_order_for_a_sku_not_heard_of_yet_is_placed_for_inventory_to_decide() -> None:
    state = InMemoryState()  # the catalog is empty: no StockLevelChanged has arrived yet
    async with uow(state) as u:
        order = await place_order(command(), u)
    assert state.tables["orders"][order.order_id].order.status is OrderStatus.PENDING
    [placed] = state.outbox.envelopes
    assert placed.event_type == "OrderPlaced"
    assert placed.payload["items"] == [{"sku": "SKU-1", "quantity": 2}]


async def test_a_stock_level_change_sets_the_catalog_s_level_of_its_sku() -> None:
    state = InMemoryState()
    for available in (10, 7):
        async with uow(state) as u:
            await when_stock_level_changed_update_catalog(
                StockLevelChanged(sku="SKU-1", available=available, reserved=0, shipped=0), u
            )
            await u.commit()
    async with uow(state) as u:
        assert await u.catalog.available("SKU-1") == 7
        assert await u.catalog.available("SKU-2") is None


async def test_the_same_idempotency_key_and_body_return_the_first_order() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        first = await place_order(command("k1"), u)
    async with uow(state) as u:
        again = await place_order(command("k1"), u)
    assert again.order_id == first.order_id
    assert len(state.outbox.envelopes) == 1


async def test_without_looking_first_a_taken_key_fails_at_the_insert_and_writes_nothing() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        await place_order(command("k1"), u, look_first=False)
    async with uow(state) as u:
        with pytest.raises(DuplicateIdempotencyKeyError):
            await place_order(command("k1"), u, look_first=False)
    assert len(state.outbox.envelopes) == 1


async def test_the_same_idempotency_key_with_another_body_conflicts() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        await place_order(command("k1"), u)
    async with uow(state) as u:
        with pytest.raises(IdempotencyConflictError):
            await place_order(command("k1", customer="someone-else"), u)


async def test_a_reservation_confirms_the_order_and_records_order_confirmed() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        order = await place_order(command(), u)
    async with uow(state) as u:
        await when_inventory_reserved_confirm_order(
            InventoryReserved(order_id=order.order_id, items=LINES), u
        )
        await u.commit()
    stored = state.tables["orders"][order.order_id].order
    assert stored.status is OrderStatus.CONFIRMED
    assert stored.version == 2
    assert [(e.event_type, e.sequence) for e in state.outbox.envelopes] == [
        ("OrderPlaced", 1),
        ("OrderConfirmed", 2),
    ]


async def rejected_reason(rejection: InventoryRejected) -> str:
    """The reason of the OrderRejected that order records for ``rejection``."""
    state = InMemoryState()
    async with uow(state) as u:
        order = await place_order(command(), u)
    async with uow(state) as u:
        await when_inventory_rejected_reject_order(
            rejection.model_copy(update={"order_id": order.order_id}), u
        )
        await u.commit()
    assert state.tables["orders"][order.order_id].order.status is OrderStatus.REJECTED
    reason: str = state.outbox.envelopes[-1].payload["reason"]
    return reason


async def test_a_v2_rejection_names_the_short_skus_from_its_shortfalls() -> None:
    shortfalls = (Shortfall(sku="SKU-1", wanted=2, available=1), Shortfall(sku="X", wanted=1))
    rejection = InventoryRejected(order_id=uuid4(), reason="text", shortfalls=shortfalls)
    assert await rejected_reason(rejection) == "not enough stock: SKU-1 (1 of 2), X (unknown)"


async def test_a_v1_rejection_read_without_shortfalls_keeps_inventory_s_reason() -> None:
    raw_v1 = {"order_id": str(uuid4()), "reason": "SKU-1: 2 wanted, 1 available"}
    rejection = decode_payload("InventoryRejected", 1, raw_v1)
    assert isinstance(rejection, InventoryRejected)
    assert await rejected_reason(rejection) == "SKU-1: 2 wanted, 1 available"


async def test_a_reservation_for_an_unknown_order_is_a_permanent_error() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        with pytest.raises(UnknownOrderError):
            await when_inventory_reserved_confirm_order(
                InventoryReserved(order_id=uuid4(), items=LINES), u
            )
