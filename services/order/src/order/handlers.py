"""How the order service reacts to other services' events: load, call the domain; the
consumer commits. Each name says what it reacts to and what it does."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from order.domain.order import Order
from order.repository import OrderUnitOfWork
from shared.consuming.routing import Router
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import (
    InventoryRejected,
    InventoryReserved,
    ShipmentCancelled,
    ShipmentDispatched,
    StockLevelChanged,
)
from shared.writing.aggregate import NotFoundError

router = Router[OrderUnitOfWork]()
_ABOUT_AN_ORDER = (InventoryReserved, InventoryRejected, ShipmentDispatched, ShipmentCancelled)


class UnknownOrderError(NotFoundError):
    pass


@router.batch_preparer
async def load_the_batch_s_orders(events: Sequence[IntegrationEvent], uow: OrderUnitOfWork) -> None:
    """Every order the batch's events name, loaded and locked in one statement: the
    handlers then find them in hand, and each is saved once at commit."""
    await uow.orders.load_all(e.order_id for e in events if isinstance(e, _ABOUT_AN_ORDER))


async def _load(uow: OrderUnitOfWork, order_id: UUID) -> Order:
    order = await uow.orders.get(order_id)
    if order is None:
        raise UnknownOrderError(f"no order {order_id}")
    return order


def _now() -> datetime:
    return datetime.now(UTC)


@router.subscriber(InventoryReserved)
async def when_inventory_reserved_confirm_order(
    event: InventoryReserved, uow: OrderUnitOfWork
) -> None:
    order = await _load(uow, event.order_id)
    order.confirm(_now())


@router.subscriber(InventoryRejected)
async def when_inventory_rejected_reject_order(
    event: InventoryRejected, uow: OrderUnitOfWork
) -> None:
    order = await _load(uow, event.order_id)
    order.reject(_rejection_reason(event), _now())


def _rejection_reason(event: InventoryRejected) -> str:
    """For the customer: the SKUs short, from the structured shortfalls when inventory sent
    them (v2); else inventory's own text (a v1 event, read with no shortfalls)."""
    if not event.shortfalls:
        return event.reason
    short = ", ".join(
        f"{s.sku} (unknown)" if s.available is None else f"{s.sku} ({s.available} of {s.wanted})"
        for s in event.shortfalls
    )
    return f"not enough stock: {short}"


@router.subscriber(ShipmentDispatched)
async def when_shipment_dispatched_mark_order_shipped(
    event: ShipmentDispatched, uow: OrderUnitOfWork
) -> None:
    order = await _load(uow, event.order_id)
    order.shipment_dispatched(_now(), event.shipping_address)


@router.subscriber(ShipmentCancelled)
async def when_shipment_cancelled_cancel_order(
    event: ShipmentCancelled, uow: OrderUnitOfWork
) -> None:
    order = await _load(uow, event.order_id)
    order.shipment_cancelled(_now())


@router.subscriber(StockLevelChanged)
async def when_stock_level_changed_update_catalog(
    event: StockLevelChanged, uow: OrderUnitOfWork
) -> None:
    await uow.catalog.update(event.sku, event.available)
