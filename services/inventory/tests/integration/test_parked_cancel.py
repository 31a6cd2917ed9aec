"""An order's cancel that arrives before its placement (events published without a key, or
any gap) is parked, then applied right after the placement fills the gap, in the same
transaction: it must see the reservation the placement just made, and release it. Against
real PostgreSQL, where the repositories read the database: the placement's changes must be
written before the successor runs. Found by `make load --pitfall unkeyed` with the sequence
check on (an order CANCELLED whose stock stayed reserved)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import asyncpg
import pytest

from inventory.bootstrap import MIGRATIONS
from inventory.handlers import router
from inventory.postgres import PostgresInventoryUnitOfWork
from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import Address, OrderCancelled, OrderLine, OrderPlaced
from shared.contracts.envelope import new_envelope
from shared.testing.infra import migrated_pool

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


def delivery(order_id: UUID, sequence: int, event: IntegrationEvent) -> Delivery:
    return Delivery(
        new_envelope(
            event,
            source="order",
            aggregate_id=str(order_id),
            sequence=sequence,
            correlation_id="c",
            causation_id=None,
        )
    )


@pytest.mark.parametrize("batched", [False, True], ids=["one at a time", "in one batch"])
async def test_a_cancel_parked_before_its_placement_releases_what_the_placement_reserved(
    pool: asyncpg.Pool, batched: bool
) -> None:
    async with PostgresInventoryUnitOfWork(pool, "inventory") as uow:
        (await uow.stock.get_or_create("MUG")).restock(10)
        await uow.commit()
    order_id = uuid4()
    placed = delivery(
        order_id,
        1,
        OrderPlaced(
            order_id=order_id,
            customer_id="c",
            items=(OrderLine(sku="MUG", quantity=2),),
            shipping_address=ADDRESS,
        ),
    )
    cancelled = delivery(order_id, 2, OrderCancelled(order_id=order_id, reason="changed mind"))
    processor = EventProcessor(router, lambda: PostgresInventoryUnitOfWork(pool, "inventory"))

    if batched:
        assert await processor.process_batch([cancelled, placed]) == [
            Outcome.PARKED,
            Outcome.APPLIED,
        ]
    else:
        assert await processor.process(cancelled) is Outcome.PARKED
        assert await processor.process(placed) is Outcome.APPLIED

    status = await pool.fetchval("SELECT status FROM reservations WHERE order_id = $1", order_id)
    available = await pool.fetchval("SELECT available FROM stock WHERE sku = 'MUG'")
    assert (status, available) == ("RELEASED", 10)
