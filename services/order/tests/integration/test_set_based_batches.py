"""A batch of events costs the order service the statements of one event, against real
PostgreSQL: the batch preparer loads and locks its orders in one statement, the handlers read
nothing, and the changed orders are saved in one statement at commit (each with its version
check)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from uuid import UUID

import asyncpg
import pytest

from order.bootstrap import MIGRATIONS
from order.commands import PlaceOrder, place_order
from order.handlers import router
from order.postgres import PostgresOrderUnitOfWork
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts.catalog import Address, InventoryReserved, OrderLine
from shared.contracts.envelope import new_envelope
from shared.testing.infra import migrated_pool
from shared.testing.statements import StatementLog

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
PLACE = PlaceOrder("c", (OrderLine(sku="SKU-1", quantity=2),), ADDRESS, None)


class Counted(StatementLog, PostgresOrderUnitOfWork):
    pass


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


async def placed(pool: asyncpg.Pool, n: int) -> list[UUID]:
    order_ids = []
    for _ in range(n):
        async with PostgresOrderUnitOfWork(pool, "order") as uow:
            order_ids.append((await place_order(PLACE, uow)).order_id)
    return order_ids


def reserved(order_id: UUID) -> Delivery:
    event = InventoryReserved(order_id=order_id, items=(OrderLine(sku="SKU-1", quantity=2),))
    return Delivery(
        new_envelope(
            event,
            source="inventory",
            aggregate_id=str(order_id),
            sequence=1,
            correlation_id="c",
            causation_id=None,
        )
    )


async def statements(pool: asyncpg.Pool, order_ids: Sequence[UUID]) -> int:
    sent: list[str] = []
    Counted.sent = sent
    processor = EventProcessor(router, lambda: Counted(pool, "order"))
    outcomes = await processor.process_batch([reserved(i) for i in order_ids])
    assert outcomes == [Outcome.APPLIED] * len(order_ids)
    return len(sent)


async def test_a_batch_of_five_confirmations_costs_the_statements_of_one(
    pool: asyncpg.Pool,
) -> None:
    order_ids = await placed(pool, 9)
    for warm_up in (order_ids[:1], order_ids[1:3]):  # asyncpg's type introspection, of the
        await statements(pool, warm_up)  # statements of one order and of several
    one = await statements(pool, order_ids[3:4])
    five = await statements(pool, order_ids[4:])

    assert five == one
    rows = await pool.fetch("SELECT status, version FROM orders")
    assert {(r["status"], r["version"]) for r in rows} == {("CONFIRMED", 2)}
