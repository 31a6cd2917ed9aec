"""How shipping reacts to orders. The dispatcher that later sends the scheduled shipments is
in :mod:`shipping.dispatcher`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from shared.consuming.routing import Handler, Router
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import (
    OrderCancellationRequested,
    OrderConfirmed,
    OrderShippingAddressChanged,
)
from shipping.dispatcher import DispatchAlarm
from shipping.domain.shipment import Shipment
from shipping.repository import ShippingUnitOfWork

log = logging.getLogger(__name__)
_ABOUT_A_SHIPMENT = (OrderConfirmed, OrderShippingAddressChanged, OrderCancellationRequested)


@dataclass(frozen=True)
class ShippingDeps:
    """What a handler needs besides its event and unit of work, built once by the composition
    root: the time from scheduling to dispatch, and the alarm of this process's dispatcher,
    rung when a scheduled shipment is committed."""

    dispatch_delay: timedelta
    alarm: DispatchAlarm


def router_for(deps: ShippingDeps) -> Router[ShippingUnitOfWork]:
    """Shipping's routing table, one line a subscription, its handlers given ``deps``."""
    router = Router[ShippingUnitOfWork]()
    router.batch_preparer(load_the_batch_s_shipments)
    router.subscriber(OrderConfirmed)(_given(deps, when_order_confirmed_schedule_shipment))
    router.subscriber(OrderShippingAddressChanged)(
        when_order_shipping_address_changed_redirect_shipment
    )
    router.subscriber(OrderCancellationRequested)(when_order_cancellation_requested_cancel_shipment)
    return router


def _now() -> datetime:
    return datetime.now(UTC)


async def load_the_batch_s_shipments(
    events: Sequence[IntegrationEvent], uow: ShippingUnitOfWork
) -> None:
    """The shipment of every order the batch's events name, loaded and locked in one
    statement: the handlers then find them in hand, and each is saved once at commit."""
    await uow.shipments.load_all(e.order_id for e in events if isinstance(e, _ABOUT_A_SHIPMENT))


async def when_order_confirmed_schedule_shipment(
    event: OrderConfirmed, uow: ShippingUnitOfWork, deps: ShippingDeps
) -> None:
    if await uow.shipments.get(event.order_id) is not None:
        return
    now = _now()
    shipment = Shipment.schedule(
        event.order_id, event.shipping_address, now=now, dispatch_at=now + deps.dispatch_delay
    )
    uow.shipments.add(shipment)
    uow.after_commit(lambda: deps.alarm.ring_at(shipment.dispatch_at))


async def when_order_shipping_address_changed_redirect_shipment(
    event: OrderShippingAddressChanged, uow: ShippingUnitOfWork
) -> None:
    shipment = await uow.shipments.get(event.order_id)
    if shipment is None:
        # Not confirmed yet: OrderConfirmed, later on the same stream, carries the address.
        return
    if not shipment.redirect(event.shipping_address, _now()):
        log.info("address change for order %s arrived after dispatch: not applied", event.order_id)


async def when_order_cancellation_requested_cancel_shipment(
    event: OrderCancellationRequested, uow: ShippingUnitOfWork
) -> None:
    shipment = await uow.shipments.get(event.order_id)
    if shipment is None:
        uow.shipments.add(Shipment.cancelled_before_scheduling(event.order_id, now=_now()))
    else:
        shipment.cancel(_now())


E = TypeVar("E", bound=IntegrationEvent)


def _given(
    deps: ShippingDeps, handler: Callable[[E, ShippingUnitOfWork, ShippingDeps], Awaitable[None]]
) -> Handler[E, ShippingUnitOfWork]:
    """``handler`` with ``deps`` bound, under its own name: the routing table prints it."""

    @functools.wraps(handler)
    async def given(event: E, uow: ShippingUnitOfWork) -> None:
        await handler(event, uow, deps)

    return given
