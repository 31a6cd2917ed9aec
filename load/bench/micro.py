"""CPU per event of the consumer's core, in one process, against the real database.

``make bench`` measures the whole suite, and on a noisy machine its CPU figures move by a
tenth between runs of one commit. This measures one thing steadily: the shipping service's
``EventProcessor`` applying a fixed stream of events (for each order, an ``OrderPlaced`` it
ignores and an ``OrderConfirmed`` that schedules a shipment), one at a time or in batches,
with or without the per-event middleware (span, metrics, log line). Every figure is CPU time
of this process (its span-exporting thread included) per event::

    python -m load.bench.micro                       # the four combinations, 1,000 events each
    python -m load.bench.micro --events 200 --batch 10 --observed

It needs the suite's PostgreSQL (``make start``) and makes a throwaway database; spans go to
the configured OTLP endpoint when ``--observed``, log lines to nowhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from uuid import uuid4

import uvloop
from opentelemetry import trace

from shared.consuming.middleware import compose, measured, traced
from shared.consuming.processing import Delivery, EventProcessor
from shared.contracts.catalog import Address, OrderConfirmed, OrderLine, OrderPlaced
from shared.contracts.envelope import new_envelope
from shared.observability.logs import setup_logging
from shared.observability.tracing import new_tracer_provider
from shared.persistence.db import create_pool
from shared.testing.infra import create_database, drop_database
from shared.writing.outbox import to_message
from shipping.bootstrap import MIGRATIONS
from shipping.dispatcher import DispatchAlarm
from shipping.handlers import ShippingDeps, router_for
from shipping.postgres import PostgresShippingUnitOfWork
from shipping.settings import Settings

ADDRESS = Address(line1="1 Main St", city="Springfield", postal_code="12345", country="US")


def deliveries(orders: int) -> list[Delivery]:
    """For each order, the two records shipping receives first, as the relay sends them."""
    out = []
    for i in range(orders):
        order_id = uuid4()
        lines = (OrderLine(sku="MICRO", quantity=1),)
        events = (
            OrderPlaced(order_id=order_id, customer_id="c", items=lines, shipping_address=ADDRESS),
            OrderConfirmed(order_id=order_id, items=lines, shipping_address=ADDRESS),
        )
        for sequence, event in enumerate(events, start=1):
            envelope = new_envelope(
                event, source="order", aggregate_id=str(order_id), sequence=sequence,
                correlation_id=f"micro-{order_id}", causation_id=None,
            )  # fmt: skip
            message = to_message(envelope, "orders")
            offset = 2 * i + sequence
            out.append(
                Delivery(envelope, "orders", 0, offset, message.headers, None, message.value)
            )
    return out


async def measure(url: str, events: int, batch: int, observed: bool) -> float:
    """Microseconds of CPU per event, over ``events`` events after a warm-up."""
    pool = await create_pool(url)
    try:
        deps = ShippingDeps(dispatch_delay=timedelta(seconds=10), alarm=DispatchAlarm())
        processor = EventProcessor(
            router_for(deps), lambda: PostgresShippingUnitOfWork(pool, "shipping")
        )
        observe = compose([traced(processor.handles), measured("shipping")] if observed else [])
        warm_up, measured_run = deliveries(200), deliveries(events // 2)
        for delivery in warm_up:
            await processor.process_batch([delivery], observe)
        started = time.process_time()
        for i in range(0, len(measured_run), batch):
            await processor.process_batch(measured_run[i : i + batch], observe)
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        return (time.process_time() - started) / len(measured_run) * 1e6
    finally:
        await pool.close()


async def run(events: int, batches: Sequence[int], observed: Sequence[bool]) -> None:
    url = await create_database(MIGRATIONS)
    try:
        for with_middleware in observed:
            for batch in batches:
                cpu = await measure(url, events, batch, with_middleware)
                what = "with spans, metrics, logs" if with_middleware else "bare"
                print(f"batch {batch:3}  {what:27} {cpu:7.0f} us of CPU per event", flush=True)
    finally:
        await drop_database(url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.bench.micro", description=__doc__)
    parser.add_argument("--events", type=int, default=1000, help="events per measurement")
    parser.add_argument("--batch", type=int, help="one batch size (default: 1 and 10)")
    parser.add_argument("--observed", action="store_true", help="only with the middleware")
    args = parser.parse_args(argv)
    settings = Settings(http_port=0, database_url="postgresql://unused", admin_token="micro" * 8)
    setup_logging("shipping", "INFO")
    nowhere = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(nowhere)
    trace.set_tracer_provider(new_tracer_provider(settings))
    batches = [args.batch] if args.batch else [1, 10]
    observed = [True] if args.observed else [False, True]
    uvloop.run(run(args.events, batches, observed))  # the services' event loop (uvicorn's)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
