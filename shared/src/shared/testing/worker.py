"""A relay or a consumer in a process of its own, for fault tests that SIGKILL it.

    python -m shared.testing.worker relay       # publishes the outbox of DATABASE_URL
    python -m shared.testing.worker consumer    # applies OrderRejected events from "orders"
    python -m shared.testing.worker write N KEY # commits N events for aggregate KEY
    python -m shared.testing.worker burst N ID  # N address edits of order ID, debounced
                                                # (not with PITFALL_NO_DEBOUNCE); then emits
                                                # and relays until killed (failpoint
                                                # burst.quiet_period: right after the edits)

The consumer's business change is a row in ``applied (aggregate_id, sequence, reason)``, so a
test can count how often each event took effect. Settings come from the environment
(SERVICE_NAME, DATABASE_URL, FAILPOINTS, PITFALL_*, ...), like a real service.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from uuid import UUID, uuid4

import asyncpg

from shared.consuming.consumer import ConsumerRunner
from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.processing import EventProcessor
from shared.consuming.routing import Router
from shared.contracts.catalog import Address, OrderRejected, OrderShippingAddressChanged
from shared.faults import failpoint
from shared.kafka import Producer
from shared.observability.correlation import correlated
from shared.observability.logs import setup_logging
from shared.persistence.postgres import PostgresUnitOfWork
from shared.pitfalls import strategies
from shared.service.settings import ServiceSettings
from shared.writing.aggregate import Aggregate, DomainEvent
from shared.writing.debounce import DebounceEmitter
from shared.writing.relay import OutboxRelay
from shared.writing.uow import Coarse, debounced

APPLIED_TABLE = """
CREATE TABLE IF NOT EXISTS applied (
    id           serial PRIMARY KEY,
    aggregate_id text NOT NULL,
    reason       text NOT NULL
)
"""

router = Router[PostgresUnitOfWork]()


@router.subscriber(OrderRejected)
async def when_order_rejected_record_it(event: OrderRejected, uow: PostgresUnitOfWork) -> None:
    await uow.conn.execute(
        "INSERT INTO applied (aggregate_id, reason) VALUES ($1, $2)",
        str(event.order_id),
        event.reason,
    )


class WorkerSettings(ServiceSettings):
    http_port: int = 0
    admin_token: str = "unused: the worker serves no admin API"
    write_interval_seconds: float = 0.0


class Item(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


class AddressEdited(DomainEvent):
    order_id: UUID
    line1: str

    def published_as(self) -> OrderShippingAddressChanged:
        return OrderShippingAddressChanged(
            order_id=self.order_id, shipping_address=address(self.line1)
        )


def address(line1: str) -> Address:
    return Address(line1=line1, city="Lyon", postal_code="69001", country="FR")


async def edit_address(
    pool: asyncpg.Pool, source: str, order_id: UUID, count: int, *, coarse: Coarse = debounced
) -> None:
    """``count`` edits of one order's address (``street 1`` .. ``street <count>``), one
    transaction each, as a burst of PUT requests would commit them."""
    with correlated(f"burst:{order_id}", None):
        for i in range(1, count + 1):
            async with PostgresUnitOfWork(pool, source, coarse=coarse) as uow:
                item = Item(str(order_id))
                item.record(AddressEdited(order_id=order_id, line1=f"street {i}"))
                uow.track(item)
                await uow.commit()


async def burst(settings: WorkerSettings, count: int, order_id: UUID) -> None:
    """Edit, then emit due events and relay them, like a service, until killed."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    chosen = strategies(settings, Producer(settings).publish)
    await edit_address(pool, settings.service_name, order_id, count, coarse=chosen.coarse)
    print(f"held {count}", flush=True)
    await failpoint("burst.quiet_period")  # a fault test's SIGKILL: the burst is committed
    relay = OutboxRelay(settings, pool, Producer(settings))
    emitter = DebounceEmitter(
        pool,
        settings.service_name,
        quiet_seconds=settings.debounce_quiet_seconds,
        max_wait_seconds=settings.debounce_max_wait_seconds,
        poll_seconds=settings.debounce_poll_seconds,
        emitted=relay.wake,
    )
    await asyncio.gather(emitter.run(), relay.run())


async def write(settings: WorkerSettings, count: int, key: str) -> None:
    """Commit ``count`` events for one aggregate, one transaction each, through the unit of
    work (so the naive dual-write pitfall mode applies when switched on)."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    assert pool is not None
    producer = Producer(settings)
    new_outbox = strategies(settings, producer.publish).new_outbox
    order_id = uuid4()
    try:
        with correlated(f"write:{key}", None):
            for i in range(1, count + 1):
                async with PostgresUnitOfWork(
                    pool, settings.service_name, new_outbox=new_outbox
                ) as uow:
                    await uow.conn.execute(
                        "INSERT INTO applied (aggregate_id, reason) VALUES ($1, $2)", key, f"w{i}"
                    )
                    item = Item(key)
                    item.record(OrderRejected(order_id=order_id, reason=f"{key}:{i}"))
                    uow.track(item)
                    await uow.commit()
                await asyncio.sleep(settings.write_interval_seconds)
    finally:
        await producer.close()
        await pool.close()


async def relay(settings: ServiceSettings) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    producer = Producer(settings)
    key_of = strategies(settings, producer.publish).key_of
    await OutboxRelay(settings, pool, producer, key_of=key_of).run()


async def consume(settings: ServiceSettings) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    assert pool is not None
    await pool.execute(APPLIED_TABLE)
    producer = Producer(settings)
    chosen = strategies(settings, producer.publish)
    processor = EventProcessor(
        router,
        lambda: PostgresUnitOfWork(pool, settings.service_name),
        dedup=chosen.dedup,
        sequence_check=chosen.sequence_check,
    )
    sink = DeadLetterSink(pool, producer, settings.service_name)
    offsets = chosen.new_offsets()
    await ConsumerRunner(settings, processor, router.topics, sink, offsets=offsets).run()


def main(argv: list[str]) -> None:
    settings = WorkerSettings()
    setup_logging(settings.service_name, settings.log_level)
    logging.getLogger("shared").setLevel(logging.INFO)
    match argv:
        case ["relay"]:
            asyncio.run(relay(settings))
        case ["consumer"]:
            asyncio.run(consume(settings))
        case ["write", count, key]:
            asyncio.run(write(settings, int(count), key))
        case ["burst", count, order_id]:
            asyncio.run(burst(settings, int(count), UUID(order_id)))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
