"""A batch of events costs inventory the statements of one event, against real PostgreSQL: its
reservations and stock are loaded and locked up front (the batch preparer), its handlers
read nothing, and what changed is written once at commit, one statement per table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from uuid import UUID, uuid4

import asyncpg
import pytest

from inventory.bootstrap import MIGRATIONS
from inventory.handlers import router
from inventory.postgres import PostgresInventoryUnitOfWork
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import Address, OrderLine, OrderPlaced, ShipmentDispatched
from shared.contracts.envelope import new_envelope
from shared.testing.infra import migrated_pool
from shared.testing.statements import StatementLog

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
SKUS = ("A", "B", "C", "D", "E")


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        async with PostgresInventoryUnitOfWork(pool, "inventory") as uow:
            for sku in SKUS:
                (await uow.stock.get_or_create(sku)).restock(100)
            await uow.commit()
        yield pool


class Counted(StatementLog, PostgresInventoryUnitOfWork):
    pass


def delivery(event: IntegrationEvent, aggregate_id: UUID, source: str) -> Delivery:
    return Delivery(
        new_envelope(
            event,
            source=source,
            aggregate_id=str(aggregate_id),
            sequence=1,
            correlation_id="c",
            causation_id=None,
        )
    )


def placed(order_id: UUID, sku: str) -> Delivery:
    lines = (OrderLine(sku=sku, quantity=1),)
    event = OrderPlaced(order_id=order_id, customer_id="c", items=lines, shipping_address=ADDRESS)
    return delivery(event, order_id, "order")


def dispatched(order_id: UUID) -> Delivery:
    event = ShipmentDispatched(order_id=order_id, shipment_id=uuid4(), shipping_address=ADDRESS)
    return delivery(event, order_id, "shipping")


async def statements(pool: asyncpg.Pool, batch: Sequence[Delivery]) -> int:
    """The statements ``batch`` sent after BEGIN, COMMIT included. The first batch on a
    connection also sends asyncpg's type introspection: the tests warm up first."""
    sent: list[str] = []
    Counted.sent = sent
    processor = EventProcessor(router, lambda: Counted(pool, "inventory"))
    assert await processor.process_batch(batch) == [Outcome.APPLIED] * len(batch)
    return len(sent)


async def warm_up(pool: asyncpg.Pool) -> None:
    """Batches of one and of two: the statements of one row and those of several."""
    await statements(pool, [placed(uuid4(), "A")])
    await statements(pool, [placed(uuid4(), "A"), placed(uuid4(), "B")])


async def test_a_batch_of_five_placements_costs_the_statements_of_one(
    pool: asyncpg.Pool,
) -> None:
    await warm_up(pool)
    one = await statements(pool, [placed(uuid4(), "A")])
    five = await statements(pool, [placed(uuid4(), sku) for sku in SKUS])

    assert five == one
    rows = await pool.fetch("SELECT sku, reserved FROM stock ORDER BY sku")
    assert [(r["sku"], r["reserved"]) for r in rows] == [
        ("A", 4),
        ("B", 2),
        *((s, 1) for s in SKUS[2:]),
    ]


async def test_a_batch_that_reserves_and_ships_one_order_writes_each_row_once(
    pool: asyncpg.Pool,
) -> None:
    await warm_up(pool)
    alone = await statements(pool, [placed(uuid4(), "A")])
    order_id = uuid4()
    both = await statements(pool, [placed(order_id, "C"), dispatched(order_id)])

    assert both == alone
    row = await pool.fetchrow("SELECT reserved, shipped FROM stock WHERE sku = 'C'")
    assert row is not None
    assert (row["reserved"], row["shipped"]) == (0, 1)
    status = await pool.fetchval("SELECT status FROM reservations WHERE order_id = $1", order_id)
    assert status == "SHIPPED"
