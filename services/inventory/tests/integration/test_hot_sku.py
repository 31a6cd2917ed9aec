"""Stock churn on one hot SKU against real PostgreSQL and Kafka: hundreds of orders move its
stock hundreds of times; a bounded number of ``StockLevelChanged`` cross Kafka, and the order
service's view, fed from the real topic, converges to the final level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from inventory.bootstrap import MIGRATIONS as INVENTORY_MIGRATIONS
from inventory.handlers import router as inventory_router
from inventory.postgres import PostgresInventoryUnitOfWork
from order.bootstrap import MIGRATIONS as ORDER_MIGRATIONS
from order.handlers import router as order_router
from order.postgres import PostgresOrderUnitOfWork
from shared.contracts.catalog import Address, OrderLine, OrderPlaced
from shared.contracts.envelope import Envelope, parse_envelope
from shared.kafka import Producer
from shared.pitfalls.no_debounce import published_at_once
from shared.service.settings import ServiceSettings
from shared.testing.fakes import InMemoryDelivery
from shared.testing.infra import (
    create_database,
    drop_database,
    end_offsets,
    kafka_bootstrap,
    unique,
)
from shared.writing.debounce import DebounceEmitter
from shared.writing.relay import OutboxRelay
from shared.writing.uow import debounced

ORDERS = 300
ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


@dataclass
class Databases:
    inventory: asyncpg.Pool
    order: asyncpg.Pool
    settings: ServiceSettings


@pytest.fixture
async def databases() -> AsyncIterator[Databases]:
    urls = [await create_database(INVENTORY_MIGRATIONS), await create_database(ORDER_MIGRATIONS)]
    pools: list[asyncpg.Pool] = [
        await asyncpg.create_pool(url, min_size=1, max_size=4) for url in urls
    ]
    settings = ServiceSettings(
        service_name="inventory",
        http_port=0,
        database_url=urls[0],
        kafka_bootstrap_servers=kafka_bootstrap(),
        otel_sdk_disabled=True,
        admin_token="integration-test-token",
    )
    try:
        yield Databases(pools[0], pools[1], settings)
    finally:
        for pool in pools:
            await pool.close()
        for url in urls:
            await drop_database(url)


async def stock_events(sku: str, since: dict[TopicPartition, int], expected: int) -> list[Envelope]:
    """The envelopes keyed ``sku`` on ``stock``, until the last one shows ``expected``
    available and nothing more came for two seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(), enable_auto_commit=False)
    await consumer.start()
    found: list[Envelope] = []
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        deadline, last = time.monotonic() + 60, time.monotonic()
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    if record.key == sku.encode():
                        found.append(parse_envelope(record.value))
                        last = time.monotonic()
            settled = found and found[-1].payload["available"] == expected
            if settled and time.monotonic() - last > 2.0:
                break
        return found
    finally:
        await consumer.stop()


async def churn(db: Databases, sku: str, *, debounce: bool) -> list[Envelope]:
    """Restock ``sku``, then reserve one unit for each of ``ORDERS`` orders, each its own
    event and transaction; emit and relay what that publishes; the stock events read back."""

    def new_uow() -> PostgresInventoryUnitOfWork:
        return PostgresInventoryUnitOfWork(
            db.inventory, "inventory", coarse=debounced if debounce else published_at_once
        )

    since = await end_offsets("stock")
    producer = Producer(db.settings)
    relay = OutboxRelay(db.settings, db.inventory, producer)
    emitter = DebounceEmitter(
        db.inventory,
        "inventory",
        quiet_seconds=0.5,
        max_wait_seconds=5.0,
        poll_seconds=0.1,
        emitted=relay.wake,
    )
    tasks = [asyncio.create_task(relay.run()), asyncio.create_task(emitter.run())]
    try:
        async with new_uow() as uow:
            (await uow.stock.get_or_create(sku)).restock(10_000)
            await uow.commit()
        delivery = InMemoryDelivery(inventory_router, new_uow)
        for _ in range(ORDERS):
            order_id = uuid4()
            placed = OrderPlaced(
                order_id=order_id,
                customer_id="c",
                items=(OrderLine(sku=sku, quantity=1),),
                shipping_address=ADDRESS,
            )
            await delivery.deliver(placed, source="order", key=str(order_id))
        events = await stock_events(sku, since, expected=10_000 - ORDERS)
        mode = "debounced" if debounce else "PITFALL_NO_DEBOUNCE"
        print(
            f"\n{mode}: {ORDERS + 1} stock movements of one SKU -> {len(events)} StockLevelChanged"
        )
        return events
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await producer.close()


async def order_view_of(db: Databases, sku: str, events: list[Envelope]) -> int:
    """Feed the stock events, as read from Kafka, to the order service's handlers."""
    delivery = InMemoryDelivery(order_router, lambda: PostgresOrderUnitOfWork(db.order, "order"))
    for envelope in events:
        await delivery.deliver(envelope)
    available: int = await db.order.fetchval("SELECT available FROM known_skus WHERE sku = $1", sku)
    return available


async def test_a_hot_sku_publishes_a_bounded_number_of_levels_and_the_order_view_converges(
    databases: Databases,
) -> None:
    sku = unique("HOT")
    events = await churn(databases, sku, debounce=True)
    assert 1 <= len(events) <= 10
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert await order_view_of(databases, sku, events) == 10_000 - ORDERS


async def test_without_debounce_every_movement_of_the_hot_sku_crosses_kafka(
    databases: Databases,
) -> None:
    """The pitfall mode PITFALL_NO_DEBOUNCE: one StockLevelChanged per movement."""
    sku = unique("HOT")
    events = await churn(databases, sku, debounce=False)
    assert len(events) == ORDERS + 1
    assert await order_view_of(databases, sku, events) == 10_000 - ORDERS
