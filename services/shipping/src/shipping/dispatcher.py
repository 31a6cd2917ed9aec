"""The durable dispatcher: the background task that dispatches due shipments, and the alarm
that tells it when to look. The bootstrap builds one alarm per service and gives it both to
the dispatcher, which waits on it, and to the handlers (``ShippingDeps``), which ring it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from uuid import UUID

from prometheus_client import Counter

from shared.observability.correlation import correlated
from shared.observability.tracing import context_from_headers, tracer
from shared.persistence.db import LOST_RACE_ERRORS, TRANSIENT_DATABASE_ERRORS
from shipping.repository import DueShipment, ShippingUnitOfWork, UnreadableShipmentError

log = logging.getLogger(__name__)

SHIPMENTS_SET_ASIDE = Counter(
    "shipments_set_aside_total",
    "Shipments the dispatcher could not dispatch and set aside (their dispatch_error says why)",
    ["service"],
)


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


def _now() -> datetime:
    return datetime.now(UTC)


async def run_dispatcher(
    new_uow: Callable[[], ShippingUnitOfWork],
    alarm: DispatchAlarm,
    poll_interval: float,
    service: str = "shipping",
) -> None:
    """The scheduler is the shipments table itself: a restart loses nothing, it only
    dispatches late. Between passes it sleeps until ``alarm`` rings."""
    limit = 50
    while True:
        try:
            dispatched = await dispatch_due_shipments(new_uow, limit, service=service)
        except LOST_RACE_ERRORS as exc:  # a consumer's transaction locked the same shipments
            log.info("dispatcher pass lost a race (%s); running it again", exc)
            continue
        if dispatched:
            log.info("dispatched %d shipment(s)", dispatched)
        if dispatched < limit:  # all that were due: the next pass waits for the alarm
            await alarm.wait(poll_interval)


async def dispatch_due_shipments(
    new_uow: Callable[[], ShippingUnitOfWork], limit: int = 50, *, service: str = "shipping"
) -> int:
    """One dispatcher pass, in one transaction; returns how many shipments it dispatched (it
    looked at ``limit`` of the due ones at most). Each dispatch runs under the correlation
    id and inside the trace of the flow that scheduled it, and is flushed there, so its
    event carries them. ``due`` locks the shipments it returns and skips those another
    transaction holds, so a cancellation in flight wins (the next pass no longer finds the
    shipment due), and a second dispatcher takes other shipments.

    A shipment that cannot be dispatched would fail every pass, and every shipment due after
    it would wait (head of line). So a pass that fails, other than for the database's sake,
    is rolled back and goes again one shipment per transaction: one that fails alone is set
    aside with the reason (``ShipmentRepository.set_aside``), logged and counted, and the
    others are dispatched. Nothing is paid for this while every shipment goes out."""
    try:
        return await _dispatch(new_uow, limit)
    except (*TRANSIENT_DATABASE_ERRORS, *LOST_RACE_ERRORS):
        raise  # not a shipment's fault: the pass runs again
    except Exception as exc:
        log.warning("dispatcher pass rolled back (%r); one shipment at a time", exc)
    dispatched = 0
    for _ in range(limit):
        outcome = await _dispatch_next(new_uow, service)
        if outcome is _Next.NONE_DUE:
            break
        if outcome is _Next.DISPATCHED:
            dispatched += 1
    return dispatched


async def _dispatch(new_uow: Callable[[], ShippingUnitOfWork], limit: int) -> int:
    dispatched = 0
    async with new_uow() as uow:
        for item in await uow.shipments.due(_now(), limit):
            with _in_flow(item):
                item.shipment.dispatch(_now())
                dispatched += 1
                await uow.flush()
        await uow.commit()
    return dispatched


class _Next(enum.Enum):
    DISPATCHED = "dispatched"
    SET_ASIDE = "set aside"
    NONE_DUE = "none due"


async def _dispatch_next(new_uow: Callable[[], ShippingUnitOfWork], service: str) -> _Next:
    """The oldest due shipment, alone in its transaction, so that a failure is its own: it
    is then set aside."""
    taken: DueShipment | None = None
    try:
        async with new_uow() as uow:
            due = await uow.shipments.due(_now(), 1)
            if not due:
                return _Next.NONE_DUE
            taken = due[0]
            with _in_flow(taken):
                taken.shipment.dispatch(_now())
                await uow.flush()
            await uow.commit()
        return _Next.DISPATCHED
    except (*TRANSIENT_DATABASE_ERRORS, *LOST_RACE_ERRORS):
        raise
    except UnreadableShipmentError as exc:
        await _set_aside(new_uow, exc.order_id, exc, service)
    except Exception as exc:
        if taken is None:
            raise  # no shipment in hand: not one shipment's fault
        await _set_aside(new_uow, taken.order_id, exc, service)
    return _Next.SET_ASIDE


async def _set_aside(
    new_uow: Callable[[], ShippingUnitOfWork], order_id: UUID, error: Exception, service: str
) -> None:
    reason = f"{type(error).__name__}: {error}"
    async with new_uow() as uow:
        correlation_id = await uow.shipments.set_aside(order_id, reason)
        await uow.commit()
    if correlation_id is None:
        return  # cancelled, dispatched or set aside meanwhile
    SHIPMENTS_SET_ASIDE.labels(service).inc()
    with correlated(correlation_id, f"dispatch:{order_id}"):
        log.error(
            "shipment of order %s set aside, not dispatched: %s; correlation_id=%s",
            order_id,
            reason,
            correlation_id,
            exc_info=error,
            extra={"fields": {"order_id": str(order_id)}},
        )


@contextlib.contextmanager
def _in_flow(item: DueShipment) -> Iterator[None]:
    """Under the correlation id and inside the trace of the flow that scheduled it."""
    with (
        correlated(item.correlation_id, f"dispatch:{item.order_id}"),
        tracer().start_as_current_span(
            "dispatch shipment", context=context_from_headers(item.trace_headers)
        ),
    ):
        yield
