"""A batch of events costs the shipping service the statements of one event, against real
PostgreSQL: the batch preparer loads and locks its shipments in one statement, the handlers
read nothing, and the new and changed shipments are written in one statement at commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.consuming.processing import Delivery, EventProcessor, Outcome
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import (
    Address,
    OrderCancellationRequested,
    OrderConfirmed,
    OrderLine,
    OrderShippingAddressChanged,
)
from shared.contracts.envelope import new_envelope
from shared.testing.infra import migrated_pool
from shared.testing.statements import StatementLog
from shipping.bootstrap import MIGRATIONS
from shipping.dispatcher import DispatchAlarm
from shipping.handlers import ShippingDeps, router_for
from shipping.postgres import PostgresShippingUnitOfWork

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
ELSEWHERE = ADDRESS.model_copy(update={"line1": "2 Elm St"})


class Counted(StatementLog, PostgresShippingUnitOfWork):
    pass


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


def delivery(event: IntegrationEvent, order_id: UUID, sequence: int = 1) -> Delivery:
    return Delivery(
        new_envelope(
            event,
            source="order",
            aggregate_id=str(order_id),
            sequence=sequence,
            correlation_id=f"flow-{order_id}",
            causation_id=None,
        )
    )


def confirmed(order_id: UUID) -> Delivery:
    lines = (OrderLine(sku="A", quantity=1),)
    return delivery(
        OrderConfirmed(order_id=order_id, items=lines, shipping_address=ADDRESS), order_id
    )


async def sent(pool: asyncpg.Pool, batch: Sequence[Delivery]) -> list[str]:
    """The statements ``batch`` sent after BEGIN, COMMIT included. The first batch on a
    connection also sends asyncpg's type introspection: the tests warm up first, with batches
    of one and of two (one row's statements and several rows')."""
    statements: list[str] = []
    Counted.sent = statements
    router = router_for(ShippingDeps(dispatch_delay=timedelta(minutes=5), alarm=DispatchAlarm()))
    processor = EventProcessor(router, lambda: Counted(pool, "shipping"))
    assert await processor.process_batch(batch) == [Outcome.APPLIED] * len(batch)
    return statements


async def test_a_batch_of_five_confirmations_costs_the_statements_of_one(
    pool: asyncpg.Pool,
) -> None:
    await sent(pool, [confirmed(uuid4())])  # the warm-up
    await sent(pool, [confirmed(uuid4()), confirmed(uuid4())])
    one = await sent(pool, [confirmed(uuid4())])
    order_ids = [uuid4() for _ in range(5)]
    five = await sent(pool, [confirmed(i) for i in order_ids])

    assert len(five) == len(one)
    rows = await pool.fetch(
        "SELECT order_id, status, correlation_id FROM shipments WHERE order_id = ANY($1)",
        order_ids,
    )
    assert {(r["order_id"], r["status"], r["correlation_id"]) for r in rows} == {
        (i, "SCHEDULED", f"flow-{i}") for i in order_ids
    }


async def test_a_batch_that_schedules_redirects_and_cancels_reads_and_writes_shipments_once(
    pool: asyncpg.Pool,
) -> None:
    redirected, cancelled, new = uuid4(), uuid4(), uuid4()
    await sent(pool, [confirmed(redirected), confirmed(cancelled)])
    batch = [
        delivery(
            OrderShippingAddressChanged(order_id=redirected, shipping_address=ELSEWHERE),
            redirected,
            sequence=2,
        ),
        confirmed(new),
        delivery(OrderCancellationRequested(order_id=cancelled), cancelled, sequence=2),
    ]

    statements = await sent(pool, batch)

    # The batch preparer's SELECT, and one write of the new shipment and the changed two.
    assert len([s for s in statements if "shipments" in s]) == 2
    rows = await pool.fetch("SELECT order_id, status, shipping_address::text FROM shipments")
    assert {
        r["order_id"]: (r["status"], Address.model_validate_json(r["shipping_address"]))
        for r in rows
    } == {
        redirected: ("SCHEDULED", ELSEWHERE),
        cancelled: ("CANCELLED", ADDRESS),
        new: ("SCHEDULED", ADDRESS),
    }
