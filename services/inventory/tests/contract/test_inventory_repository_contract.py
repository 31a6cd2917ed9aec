"""Stock and reservation repositories and the restock log: one set of cases, fake and real
Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from uuid import uuid4

import asyncpg
import pytest

from inventory.bootstrap import MIGRATIONS
from inventory.commands import AddStock, IdempotencyConflictError, add_stock
from inventory.domain.stock import Reservation, StockLevels
from inventory.postgres import PostgresInventoryUnitOfWork
from inventory.repository import DuplicateIdempotencyKeyError, InventoryUnitOfWork, RecordedRestock
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


async def test_load_all_hands_out_each_reservation_once_per_transaction(new_uow: NewUow) -> None:
    await restock(new_uow, A=5, B=5)
    first, second, unknown = uuid4(), uuid4(), uuid4()
    async with new_uow() as uow:
        for order_id, skus in ((first, "AB"), (second, "B")):
            stock = await uow.stock.lock(list(skus))
            lines = tuple(OrderLine(sku=sku, quantity=1) for sku in skus)
            uow.reservations.add(Reservation.reserve(order_id, lines, stock))
        await uow.commit()
    async with new_uow() as uow:
        loaded = await uow.reservations.load_all([second, unknown, first, second])
        assert [r.order_id for r in loaded] == [second, first]
        assert await uow.reservations.get(first) is loaded[1]
        assert await uow.reservations.get(unknown) is None
        stock = await uow.stock.lock(["B", "Z"])
        assert (await uow.stock.lock(["B"]))["B"] is stock["B"]
        assert stock["B"].reserved == 2


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


# ---- the restock log (Idempotency-Key of POST /inventory/{sku}/restock) ------------------


def a_restock(sku: str, key: str, quantity: int = 3) -> RecordedRestock:
    return RecordedRestock(key, quantity, StockLevels(sku, quantity, 2**31 + 1, 0))


async def record(new_uow: NewUow, *restocks: RecordedRestock) -> None:
    async with new_uow() as uow:
        for restock in restocks:
            await uow.stock.get_or_create(restock.sku)
            await uow.restocks.add(restock)
        await uow.commit()


async def test_a_recorded_restock_is_found_by_its_sku_and_key(new_uow: NewUow) -> None:
    recorded = a_restock("A", "delivery-1")
    await record(new_uow, recorded)
    async with new_uow() as uow:
        assert await uow.restocks.get("A", "delivery-1") == recorded
        assert await uow.restocks.get("A", "delivery-2") is None
        assert await uow.restocks.get("B", "delivery-1") is None


async def test_a_key_may_be_recorded_once_per_sku(new_uow: NewUow) -> None:
    await record(new_uow, a_restock("A", "delivery-1"), a_restock("B", "delivery-1", 4))
    async with new_uow() as uow:
        b = await uow.restocks.get("B", "delivery-1")
        await uow.stock.get_or_create("A")
        with pytest.raises(DuplicateIdempotencyKeyError):
            await uow.restocks.add(a_restock("A", "delivery-1", 5))
    assert b is not None
    assert b.quantity == 4
    async with new_uow() as uow:
        assert await uow.restocks.get("A", "delivery-1") == a_restock("A", "delivery-1")


async def test_a_restock_is_recorded_only_for_a_sku_that_exists(new_uow: NewUow) -> None:
    async with new_uow() as uow:
        with pytest.raises((ValueError, asyncpg.ForeignKeyViolationError)):
            await uow.restocks.add(a_restock("Z", "delivery-1"))


async def test_a_restock_record_and_its_stock_change_are_kept_together_or_not_at_all(
    new_uow: NewUow,
) -> None:
    async with new_uow() as uow:
        await add_stock(AddStock("A", 5, "delivery-1"), uow)  # commits
    async with new_uow() as uow:
        stock = await uow.stock.get_or_create("A")
        stock.add(7)
        await uow.restocks.add(RecordedRestock("delivery-2", 7, StockLevels.of(stock)))
        # no commit: the request died before its transaction ended
    async with new_uow() as uow:
        a = await uow.stock.get("A")
        kept = await uow.restocks.get("A", "delivery-1")
        lost = await uow.restocks.get("A", "delivery-2")
    assert a is not None
    assert (a.available, a.reserved, a.shipped) == (5, 0, 0)
    assert kept == RecordedRestock("delivery-1", 5, StockLevels("A", 5, 0, 0))
    assert lost is None


async def test_a_retried_restock_adds_once_and_another_quantity_conflicts(
    new_uow: NewUow,
) -> None:
    await restock(new_uow, A=2)
    answers = []
    for _ in range(2):
        async with new_uow() as uow:
            answers.append(await add_stock(AddStock("A", 5, "delivery-1"), uow))
    async with new_uow() as uow:
        with pytest.raises(IdempotencyConflictError):
            await add_stock(AddStock("A", 6, "delivery-1"), uow)
    async with new_uow() as uow:
        other_sku = await add_stock(AddStock("B", 6, "delivery-1"), uow)
    async with new_uow() as uow:
        a = await uow.stock.get("A")
    assert [r.replayed for r in answers] == [False, True]
    assert answers[0].levels == answers[1].levels == StockLevels("A", 7, 0, 0)
    assert other_sku.levels == StockLevels("B", 6, 0, 0)
    assert a is not None
    assert a.available == 7
