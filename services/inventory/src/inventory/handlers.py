"""How inventory reacts to orders and shipments: load, call the domain; the consumer commits."""

from __future__ import annotations

from collections.abc import Sequence

from inventory.domain.stock import Reservation
from inventory.repository import InventoryUnitOfWork
from shared.consuming.routing import Router
from shared.contracts import IntegrationEvent
from shared.contracts.catalog import OrderCancelled, OrderPlaced, ShipmentDispatched
from shared.writing.aggregate import NotFoundError

router = Router[InventoryUnitOfWork]()


class UnknownReservationError(NotFoundError):
    pass


@router.batch_preparer
async def load_the_batch_s_reservations_and_stock(
    events: Sequence[IntegrationEvent], uow: InventoryUnitOfWork
) -> None:
    """Everything the batch's events will touch, loaded and locked in two statements: the
    reservations of the orders they name, then the stock of every SKU those reservations
    and the new orders hold, in SKU order. Its handlers then read nothing, and batches of
    different partitions queue on the stock rows instead of deadlocking (a lone event's
    handler takes its reservation, then its SKUs, in the same order)."""
    placed = [e for e in events if isinstance(e, OrderPlaced)]
    held = [e.order_id for e in events if isinstance(e, OrderCancelled | ShipmentDispatched)]
    reservations = await uow.reservations.load_all([*(e.order_id for e in placed), *held])
    skus = {line.sku for e in placed for line in e.items}
    skus |= {line.sku for r in reservations for line in r.items}
    await uow.stock.lock(skus)


@router.subscriber(OrderPlaced)
async def when_order_placed_reserve_stock(event: OrderPlaced, uow: InventoryUnitOfWork) -> None:
    if await uow.reservations.get(event.order_id) is not None:
        return  # already answered (a replay with a new event id)
    stock = await uow.stock.lock([line.sku for line in event.items])
    uow.reservations.add(Reservation.reserve(event.order_id, event.items, stock))


@router.subscriber(OrderCancelled)
async def when_order_cancelled_release_stock(
    event: OrderCancelled, uow: InventoryUnitOfWork
) -> None:
    reservation = await uow.reservations.get(event.order_id)
    if reservation is not None:
        stock = await uow.stock.lock([line.sku for line in reservation.items])
        reservation.release(stock)


@router.subscriber(ShipmentDispatched)
async def when_shipment_dispatched_ship_stock(
    event: ShipmentDispatched, uow: InventoryUnitOfWork
) -> None:
    reservation = await uow.reservations.get(event.order_id)
    if reservation is None:
        raise UnknownReservationError(
            f"shipment dispatched for order {event.order_id} with no reservation"
        )
    stock = await uow.stock.lock([line.sku for line in reservation.items])
    reservation.ship(stock)
