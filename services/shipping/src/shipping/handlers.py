"""How shipping reacts to orders, and the durable dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from shared.contracts.catalog import (
    OrderCancellationRequested,
    OrderConfirmed,
    OrderShippingAddressChanged,
)
from shared.correlation import correlated
from shared.db import LOST_RACE_ERRORS
from shared.routing import Router
from shared.tracing import context_from_headers, tracer
from shipping.domain.shipment import Shipment
from shipping.repository import ShippingUnitOfWork

log = logging.getLogger(__name__)
router = Router[ShippingUnitOfWork]()

# Set from settings by the bootstrap; a module-level default keeps handlers one-argument pure.
DISPATCH_DELAY = timedelta(seconds=10)


class DispatchAlarm:
    """When this process's dispatcher should look next: at the earliest dispatch time of the
    shipments this process scheduled (rung after their commit), at the latest after the poll
    interval (for shipments scheduled by another instance, or before a restart). So a
    shipment goes out on time without the dispatcher polling the table every few
    milliseconds."""

    def __init__(self) -> None:
        self._due: datetime | None = None
        self._rung = asyncio.Event()

    def ring_at(self, due: datetime) -> None:
        if self._due is None or due < self._due:
            self._due = due
            self._rung.set()

    async def wait(self, at_most: float) -> None:
        """Sleep until the earliest dispatch time rung, or ``at_most`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + at_most
        while True:
            self._rung.clear()  # before reading the due time: a ring from now on wakes us
            left = deadline - loop.time()
            if self._due is not None:
                left = min(left, (self._due - _now()).total_seconds())
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rung.wait(), left)
        if self._due is not None and self._due <= _now():
            self._due = None  # its pass comes now; a later one is kept


ALARM = DispatchAlarm()


def _now() -> datetime:
    return datetime.now(UTC)


@router.subscriber(OrderConfirmed)
async def when_order_confirmed_schedule_shipment(
    event: OrderConfirmed, uow: ShippingUnitOfWork
) -> None:
    if await uow.shipments.get(event.order_id) is not None:
        return
    now = _now()
    shipment = Shipment.schedule(
        event.order_id, event.shipping_address, now=now, dispatch_at=now + DISPATCH_DELAY
    )
    uow.shipments.add(shipment)
    uow.after_commit(lambda: ALARM.ring_at(shipment.dispatch_at))


@router.subscriber(OrderShippingAddressChanged)
async def when_order_shipping_address_changed_redirect_shipment(
    event: OrderShippingAddressChanged, uow: ShippingUnitOfWork
) -> None:
    shipment = await uow.shipments.get(event.order_id)
    if shipment is None:
        # Not confirmed yet: OrderConfirmed, later on the same stream, carries the address.
        return
    if not shipment.redirect(event.shipping_address, _now()):
        log.info("address change for order %s arrived after dispatch: not applied", event.order_id)


@router.subscriber(OrderCancellationRequested)
async def when_order_cancellation_requested_cancel_shipment(
    event: OrderCancellationRequested, uow: ShippingUnitOfWork
) -> None:
    shipment = await uow.shipments.get(event.order_id)
    if shipment is None:
        uow.shipments.add(Shipment.cancelled_before_scheduling(event.order_id, now=_now()))
    else:
        shipment.cancel(_now())


async def dispatch_due_shipments(new_uow: Callable[[], ShippingUnitOfWork], limit: int = 50) -> int:
    """One dispatcher pass, in one transaction; returns how many shipments left (it looked at
    ``limit`` of the due ones at most). Each dispatch runs under the correlation id and inside
    the trace of the flow that scheduled it, and is flushed there, so its event carries them.
    ``due`` locks the shipments it returns and skips those another transaction holds, so a
    cancellation in flight wins (the next pass no longer finds the shipment due), and a
    second dispatcher takes other shipments."""
    dispatched = 0
    async with new_uow() as uow:
        for item in await uow.shipments.due(_now(), limit):
            with (
                correlated(item.correlation_id, f"dispatch:{item.order_id}"),
                tracer().start_as_current_span(
                    "dispatch shipment", context=context_from_headers(item.trace_headers)
                ),
            ):
                item.shipment.dispatch(_now())
                dispatched += 1
                await uow.flush()
        await uow.commit()
    return dispatched


async def run_dispatcher(new_uow: Callable[[], ShippingUnitOfWork], poll_interval: float) -> None:
    """The scheduler is the shipments table itself: a restart loses nothing, it only
    dispatches late. Between passes it sleeps until the alarm rings."""
    limit = 50
    while True:
        try:
            dispatched = await dispatch_due_shipments(new_uow, limit)
        except LOST_RACE_ERRORS as exc:  # a consumer's transaction locked the same shipments
            log.info("dispatcher pass lost a race (%s); running it again", exc)
            continue
        if dispatched:
            log.info("dispatched %d shipment(s)", dispatched)
        if dispatched < limit:  # all that were due: the next pass waits for the alarm
            await ALARM.wait(poll_interval)
