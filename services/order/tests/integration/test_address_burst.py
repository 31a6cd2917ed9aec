"""A burst of address changes through the order service's real HTTP API, its real runtime
(debounce emitter and relay), PostgreSQL and Kafka; then the event read from the topic is
applied by shipping, against its own PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from fastapi.testclient import TestClient

from order.bootstrap import MIGRATIONS as ORDER_MIGRATIONS
from order.bootstrap import bootstrap
from order.domain.order import Order, OrderStatus
from order.postgres import PostgresOrderUnitOfWork
from order.settings import Settings
from shared.contracts.catalog import Address, OrderConfirmed, OrderLine
from shared.contracts.envelope import Envelope
from shared.service.http import create_app
from shared.testing.fakes import InMemoryDelivery
from shared.testing.infra import (
    create_database,
    drop_database,
    end_offsets,
    kafka_bootstrap,
    records_keyed,
    start_group_at_end,
    unique,
)
from shipping.bootstrap import MIGRATIONS as SHIPPING_MIGRATIONS
from shipping.dispatcher import DispatchAlarm
from shipping.handlers import ShippingDeps, router_for
from shipping.postgres import PostgresShippingUnitOfWork

BURST = 1000
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")
LINES = (OrderLine(sku="A", quantity=1),)


def address(n: int) -> dict[str, str]:
    return ADDRESS.model_dump() | {"line1": f"{n} Burst Av"}


@dataclass
class OrderService:
    pool: asyncpg.Pool
    url: str


@pytest.fixture
async def order_db() -> AsyncIterator[OrderService]:
    url = await create_database(ORDER_MIGRATIONS)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    try:
        yield OrderService(pool, url)
    finally:
        await pool.close()
        await drop_database(url)


async def an_order(db: OrderService, status: OrderStatus) -> UUID:
    """An order already in ``status``, written without events (nothing crosses Kafka)."""
    order = Order.place(uuid4(), "c", LINES, ADDRESS, correlation_id=unique("flow"), now=NOW())
    order.status = status
    order.events.clear()
    async with PostgresOrderUnitOfWork(db.pool, "order") as uow:
        uow.orders.add(order)
        await uow.commit()
    return order.order_id


def NOW() -> datetime:  # noqa: N802
    return datetime.now(UTC)


async def service(db: OrderService, *, pitfall: bool) -> TestClient:
    settings = Settings(
        service_name=unique("order"),
        database_url=db.url,
        kafka_bootstrap_servers=kafka_bootstrap(),
        admin_token="integration-test-token",
        otel_sdk_disabled=True,
        relay_poll_interval_seconds=0.2,
        # The burst is one burst however slowly a busy machine sends it: the maximum wait,
        # which emits a burst that never ends, has a test of its own (test_debounce.py).
        debounce_max_wait_seconds=300.0,
        pitfall_no_debounce=pitfall,
    )
    await start_group_at_end(settings.consumer_group, ["inventory", "shipping", "stock"])
    return TestClient(create_app(bootstrap(settings)), raise_server_exceptions=False)


async def burst(db: OrderService, *, pitfall: bool) -> tuple[UUID, list[dict[str, Any]], Any]:
    """``BURST`` changes of one confirmed order's address over HTTP; the events keyed by it
    on ``orders``, and the order as GET shows it afterwards."""
    order_id = await an_order(db, OrderStatus.CONFIRMED)
    since = await end_offsets("orders")
    with await service(db, pitfall=pitfall) as client:
        for n in range(1, BURST + 1):
            response = client.put(f"/orders/{order_id}/shipping-address", json=address(n))
            assert response.status_code == 202, response.text
        envelopes = await records_keyed(
            "orders",
            str(order_id),
            since,
            settle=2.0,
            done=lambda f: len(f) >= (BURST if pitfall else 1),
        )
        shown = client.get(f"/orders/{order_id}").json()
    mode = "PITFALL_NO_DEBOUNCE" if pitfall else "debounced"
    print(f"\n{mode}: {BURST} address changes -> {len(envelopes)} OrderShippingAddressChanged")
    return order_id, envelopes, shown


async def test_1000_address_changes_cross_kafka_as_one_event_and_shipping_holds_the_last(
    order_db: OrderService,
) -> None:
    order_id, envelopes, shown = await burst(order_db, pitfall=False)
    assert [e["event_type"] for e in envelopes] == ["OrderShippingAddressChanged"]
    assert envelopes[0]["payload"]["shipping_address"] == address(BURST)
    assert shown["shipping_address"] == address(BURST)
    assert await order_db.pool.fetchval("SELECT count(*) FROM debounced_events") == 0

    # Shipping, confirmed with the first address, applies the event read from the topic.
    url = await create_database(SHIPPING_MIGRATIONS)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        deps = ShippingDeps(dispatch_delay=timedelta(seconds=10), alarm=DispatchAlarm())
        delivery = InMemoryDelivery(
            router_for(deps), lambda: PostgresShippingUnitOfWork(pool, "shipping")
        )
        confirmed = OrderConfirmed(order_id=order_id, items=LINES, shipping_address=ADDRESS)
        await delivery.deliver(confirmed, source=envelopes[0]["source"], key=str(order_id))
        await delivery.deliver(Envelope.model_validate(envelopes[0] | {"sequence": 2}))
        held = await pool.fetchval(
            "SELECT shipping_address FROM shipments WHERE order_id = $1", order_id
        )
    finally:
        await pool.close()
        await drop_database(url)
    assert Address.model_validate_json(held).model_dump() == address(BURST)


async def test_without_debounce_the_same_burst_crosses_kafka_as_1000_events(
    order_db: OrderService,
) -> None:
    """The pitfall mode PITFALL_NO_DEBOUNCE: the storm."""
    _, envelopes, shown = await burst(order_db, pitfall=True)
    assert len(envelopes) == BURST
    assert [e["sequence"] for e in envelopes] == list(range(1, BURST + 1))
    assert shown["shipping_address"] == address(BURST)


async def test_bad_address_changes_change_nothing_and_emit_nothing(
    order_db: OrderService,
) -> None:
    shipped = await an_order(order_db, OrderStatus.SHIPPED)
    since = await end_offsets("orders")
    with await service(order_db, pitfall=False) as client:
        before = client.get(f"/orders/{shipped}").json()
        late = client.put(f"/orders/{shipped}/shipping-address", json=address(1))
        unknown = client.put(f"/orders/{uuid4()}/shipping-address", json=address(1))
        malformed = client.put(
            f"/orders/{shipped}/shipping-address", json=address(1) | {"country": "France"}
        )
        assert (late.status_code, unknown.status_code, malformed.status_code) == (409, 404, 422)
        assert client.get(f"/orders/{shipped}").json() == before
    assert await order_db.pool.fetchval("SELECT count(*) FROM debounced_events") == 0
    assert await order_db.pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await records_keyed("orders", str(shipped), since, settle=0, timeout=3) == []
