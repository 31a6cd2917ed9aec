"""The order repository and catalog: one set of cases, fake and real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from order.bootstrap import MIGRATIONS
from order.commands import OrderNotFoundError, change_shipping_address
from order.domain.order import AddressChangeTooLateError, Order, OrderStatus
from order.postgres import PostgresOrderUnitOfWork
from order.repository import DuplicateIdempotencyKeyError, IdempotencyRecord, OrderUnitOfWork
from order.testing import FakeOrderUnitOfWork
from shared.contracts.catalog import Address, OrderLine, OrderShippingAddressChanged
from shared.testing.backends import units
from shared.writing.aggregate import ConcurrencyError

NewUow = Callable[[], OrderUnitOfWork]
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def new_uow(request: pytest.FixtureRequest) -> AsyncIterator[NewUow]:
    async with units(
        request.param, FakeOrderUnitOfWork, PostgresOrderUnitOfWork, MIGRATIONS, "order"
    ) as factory:
        yield factory


def an_order(minutes: int = 0) -> Order:
    order = Order.place(
        uuid4(),
        "cust",
        (OrderLine(sku="A", quantity=2),),
        ADDRESS,
        correlation_id="corr",
        now=T0 + timedelta(minutes=minutes),
    )
    order.events.clear()
    return order


async def add(new_uow: NewUow, order: Order, key: str | None = None) -> None:
    async with new_uow() as uow:
        uow.orders.add(order, IdempotencyRecord(key, "hash") if key else None)
        await uow.commit()


async def test_an_added_order_reads_back_equal(new_uow: NewUow) -> None:
    order = an_order()
    await add(new_uow, order)
    async with new_uow() as uow:
        loaded = await uow.orders.get(order.order_id)
    assert loaded is not None
    assert vars(loaded) == vars(order)


async def test_a_changed_order_is_saved_on_commit_and_not_on_rollback(new_uow: NewUow) -> None:
    order = an_order()
    await add(new_uow, order)
    async with new_uow() as uow:
        loaded = await uow.orders.get(order.order_id)
        assert loaded is not None
        loaded.confirm(T0)
        # no commit
    async with new_uow() as uow:
        loaded = await uow.orders.get(order.order_id)
        assert loaded is not None
        assert loaded.status is OrderStatus.PENDING
        loaded.confirm(T0)
        await uow.commit()
    async with new_uow() as uow:
        loaded = await uow.orders.get(order.order_id)
        assert loaded is not None
        assert (loaded.status, loaded.version) == (OrderStatus.CONFIRMED, 2)


async def test_a_stale_version_is_refused(new_uow: NewUow) -> None:
    order = an_order()
    await add(new_uow, order)
    async with new_uow() as uow:
        loaded = await uow.orders.get(order.order_id)
        assert loaded is not None
        loaded.confirm(T0)
        await uow.commit()
    stale = an_order()
    stale.order_id, stale.aggregate_id = order.order_id, str(order.order_id)
    async with new_uow() as uow:
        # As if loaded at version 1, before the confirmation above moved it to 2.
        uow.orders._loaded_versions[stale.order_id] = 1
        uow.orders.track(stale)
        stale.confirm(T0)
        with pytest.raises(ConcurrencyError):
            await uow.commit()


async def test_an_unknown_order_is_none(new_uow: NewUow) -> None:
    async with new_uow() as uow:
        assert await uow.orders.get(uuid4()) is None


async def test_an_order_is_found_by_its_idempotency_key(new_uow: NewUow) -> None:
    order = an_order()
    await add(new_uow, order, key="k-1")
    async with new_uow() as uow:
        found = await uow.orders.by_idempotency_key("k-1")
        missing = await uow.orders.by_idempotency_key("k-2")
    assert found is not None
    assert (found[0].order_id, found[1]) == (order.order_id, "hash")
    assert missing is None


async def test_a_second_order_with_a_taken_key_is_refused_and_nothing_of_it_is_kept(
    new_uow: NewUow,
) -> None:
    # POST /orders inserts without looking for the key first: this refusal is what answers
    # a retry (order.commands.place_order, shared.service.http.with_idempotency_key).
    first, second = an_order(), an_order()
    await add(new_uow, first, key="k-1")
    with pytest.raises(DuplicateIdempotencyKeyError):
        await add(new_uow, second, key="k-1")
    async with new_uow() as uow:
        assert await uow.orders.get(second.order_id) is None
        found = await uow.orders.by_idempotency_key("k-1")
    assert found is not None
    assert found[0].order_id == first.order_id


async def test_the_list_pages_in_creation_order_and_filters_by_status(new_uow: NewUow) -> None:
    orders = [an_order(minutes=i) for i in range(5)]
    for order in orders:
        await add(new_uow, order)
    async with new_uow() as uow:
        first = await uow.orders.list(None, 2, None)
        second = await uow.orders.list(None, 2, first[-1].order_id)
        pending = await uow.orders.list(OrderStatus.PENDING, 10, None)
        shipped = await uow.orders.list(OrderStatus.SHIPPED, 10, None)
    ids = [o.order_id for o in orders]
    assert [o.order_id for o in first] == ids[:2]
    assert [o.order_id for o in second] == ids[2:4]
    assert len(pending) == 5
    assert shipped == []


async def test_the_catalog_holds_the_last_level_it_was_told_of_each_sku(new_uow: NewUow) -> None:
    async with new_uow() as uow:
        await uow.catalog.update("A", 3)
        await uow.catalog.update("A", 2)
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.catalog.available("A") == 2
        assert await uow.catalog.available("B") is None


async def test_the_catalog_holds_a_stock_level_past_2_to_the_31(new_uow: NewUow) -> None:
    async with new_uow() as uow:
        await uow.catalog.update("BIG", 2**31 + 7)
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.catalog.available("BIG") == 2**31 + 7


async def test_a_burst_of_address_changes_is_held_as_one_event_with_the_last_address(
    new_uow: NewUow,
) -> None:
    order = an_order()
    await add(new_uow, order)
    for n in range(1, 6):
        async with new_uow() as uow:
            await change_shipping_address(
                order.order_id, ADDRESS.model_copy(update={"line1": f"{n} Elm St"}), uow
            )
    async with new_uow() as uow:
        stored = await uow.orders.read(order.order_id)
        held = await uow.pending.waiting()
    assert stored is not None
    assert stored.shipping_address.line1 == "5 Elm St"
    assert stored.version == order.version + 5
    ((event, changes),) = held
    assert event.event == OrderShippingAddressChanged(
        order_id=order.order_id, shipping_address=stored.shipping_address
    )
    assert (event.aggregate_id, event.correlation_id, changes) == (str(order.order_id), "corr", 5)


async def test_an_address_change_after_the_order_ended_is_refused_and_holds_nothing(
    new_uow: NewUow,
) -> None:
    order = an_order()
    order.status = OrderStatus.SHIPPED
    await add(new_uow, order)
    async with new_uow() as uow:
        with pytest.raises(AddressChangeTooLateError):
            await change_shipping_address(
                order.order_id, ADDRESS.model_copy(update={"line1": "late"}), uow
            )
    async with new_uow() as uow:
        stored = await uow.orders.read(order.order_id)
        assert await uow.pending.waiting() == []
    assert stored is not None
    assert (stored.shipping_address, stored.version) == (ADDRESS, order.version)


async def test_an_address_change_of_an_unknown_order_is_not_found(new_uow: NewUow) -> None:
    async with new_uow() as uow:
        with pytest.raises(OrderNotFoundError):
            await change_shipping_address(uuid4(), ADDRESS, uow)
        assert await uow.pending.waiting() == []
