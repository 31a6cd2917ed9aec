"""Two batches of reservations that touch the same SKUs in opposite orders, applied at once
against real PostgreSQL: with the inventory's batch preparer they queue on the stock rows;
without it they deadlock and PostgreSQL aborts one (the consumer then runs it again, a second
or more later: the deadlock timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import pytest

from inventory.bootstrap import MIGRATIONS
from inventory.handlers import router
from inventory.postgres import PostgresInventoryUnitOfWork
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts.catalog import Address, OrderLine, OrderPlaced
from shared.contracts.envelope import new_envelope
from shared.testing.infra import migrated_pool

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


class SlowUnitOfWork(PostgresInventoryUnitOfWork):
    """Lingers after each event of a batch, so the two batches interleave event by event."""

    async def flush(self) -> None:
        await super().flush()
        await asyncio.sleep(0.3)


def placed(sku: str) -> Delivery:
    order_id = uuid4()
    event = OrderPlaced(
        order_id=order_id,
        customer_id="c",
        items=(OrderLine(sku=sku, quantity=1),),
        shipping_address=ADDRESS,
    )
    return Delivery(
        new_envelope(
            event,
            source="order",
            aggregate_id=str(order_id),
            sequence=1,
            correlation_id="c",
            causation_id=None,
        )
    )


async def two_batches_at_once(pool: asyncpg.Pool) -> list[list[Outcome] | BaseException]:
    async with PostgresInventoryUnitOfWork(pool, "inventory") as uow:
        for sku in ("A", "B"):
            (await uow.stock.get_or_create(sku)).restock(10)
        await uow.commit()
    processor = EventProcessor(router, lambda: SlowUnitOfWork(pool, "inventory"))
    return list(
        await asyncio.gather(
            processor.process_batch([placed("A"), placed("B")]),
            processor.process_batch([placed("B"), placed("A")]),
            return_exceptions=True,
        )
    )


async def test_batches_lock_their_stock_first_in_sku_order_and_never_deadlock(
    pool: asyncpg.Pool,
) -> None:
    results = await two_batches_at_once(pool)

    assert results == [[Outcome.APPLIED] * 2, [Outcome.APPLIED] * 2]
    rows = await pool.fetch("SELECT sku, reserved FROM stock ORDER BY sku")
    assert [(r["sku"], r["reserved"]) for r in rows] == [("A", 2), ("B", 2)]


async def test_without_the_batch_preparer_the_same_batches_deadlock(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router, "_prepare", None)

    results = await two_batches_at_once(pool)

    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], asyncpg.DeadlockDetectedError)
