"""Stock and reservation repositories: one set of cases, fake and real Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from uuid import uuid4

import pytest

from inventory.bootstrap import MIGRATIONS
from inventory.domain.stock import Reservation
from inventory.postgres import PostgresInventoryUnitOfWork
from inventory.repository import InventoryUnitOfWork
from inventory.testing import FakeInventoryUnitOfWork
from shared.contracts.catalog import OrderLine
from shared.testing.backends import units

NewUow = Callable[[], InventoryUnitOfWork]


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def new_uow(request: pytest.FixtureRequest) -> AsyncIterator[NewUow]:
    async with units(
        request.param,
        FakeInventoryUnitOfWork,
        PostgresInventoryUnitOfWork,
        MIGRATIONS,
        "inventory",
    ) as factory:
        yield factory


async def restock(new_uow: NewUow, **available: int) -> None:
    async with new_uow() as uow:
        for sku, quantity in available.items():
            (await uow.stock.get_or_create(sku)).restock(quantity)
        await uow.commit()


async def test_restocked_skus_read_back_and_list_in_sku_order(new_uow: NewUow) -> None:
    await restock(new_uow, B=2, A=5, C=0)
    async with new_uow() as uow:
        a = await uow.stock.get("A")
        listed = await uow.stock.list(2, None)
        rest = await uow.stock.list(2, "B")
        missing = await uow.stock.get("Z")
    assert a is not None
    assert (a.available, a.reserved, a.shipped) == (5, 0, 0)
    assert [s.sku for s in listed] == ["A", "B"]
    assert [s.sku for s in rest] == ["C"]
    assert missing is None


async def test_lock_returns_only_known_skus(new_uow: NewUow) -> None:
    await restock(new_uow, A=1)
    async with new_uow() as uow:
        assert set(await uow.stock.lock(["A", "Z"])) == {"A"}


async def test_a_reservation_and_its_stock_change_commit_together(new_uow: NewUow) -> None:
    await restock(new_uow, A=5)
    order_id = uuid4()
    async with new_uow() as uow:
        stock = await uow.stock.lock(["A"])
        uow.reservations.track(
            Reservation.reserve(order_id, (OrderLine(sku="A", quantity=2),), stock)
        )
        await uow.commit()
    async with new_uow() as uow:
        reservation = await uow.reservations.get(order_id)
        a = await uow.stock.get("A")
    assert reservation is not None
    assert reservation.status == "RESERVED"
    assert a is not None
    assert (a.available, a.reserved) == (3, 2)


async def test_skus_of_names_what_the_orders_reservations_hold(new_uow: NewUow) -> None:
    await restock(new_uow, A=5, B=5, C=5)
    first, second, unknown = uuid4(), uuid4(), uuid4()
    async with new_uow() as uow:
        for order_id, skus in ((first, "AB"), (second, "B")):
            stock = await uow.stock.lock(list(skus))
            lines = tuple(OrderLine(sku=sku, quantity=1) for sku in skus)
            uow.reservations.track(Reservation.reserve(order_id, lines, stock))
        await uow.commit()
    async with new_uow() as uow:
        assert await uow.reservations.skus_of([first, second, unknown]) == {"A", "B"}
        assert await uow.reservations.skus_of([unknown]) == set()


async def test_nothing_is_saved_without_commit(new_uow: NewUow) -> None:
    await restock(new_uow, A=5)
    async with new_uow() as uow:
        (await uow.stock.get_or_create("A")).restock(99)
    async with new_uow() as uow:
        a = await uow.stock.get("A")
    assert a is not None
    assert a.available == 5


async def test_stock_counters_hold_values_past_2_to_the_31(new_uow: NewUow) -> None:
    """64-bit counters: a dispatch that takes ``shipped`` past 2^31 is stored, not refused."""
    past = 2**31 + 7
    await restock(new_uow, A=past + 5)
    async with new_uow() as uow:
        a = (await uow.stock.lock(["A"]))["A"]
        a.reserve(past)
        a.ship(past)
        await uow.commit()
    async with new_uow() as uow:
        stored = await uow.stock.get("A")
    assert stored is not None
    assert (stored.available, stored.reserved, stored.shipped) == (5, 0, past)
