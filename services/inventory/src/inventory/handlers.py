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
async def lock_the_batch_s_stock_in_sku_order(
    events: Sequence[IntegrationEvent], uow: InventoryUnitOfWork
) -> None:
    """A batch that moves the stock of more than one order locks all the SKUs it touches
    first, in SKU order: batches of different partitions then queue on the stock rows
    instead of deadlocking (each handler locks only its own SKUs)."""
    placed = [e for e in events if isinstance(e, OrderPlaced)]
    held = [e.order_id for e in events if isinstance(e, OrderCancelled | ShipmentDispatched)]
    if len(placed) + len(held) < 2:
        return
    skus = {line.sku for e in placed for line in e.items}
    if held:
        skus |= await uow.reservations.skus_of(held)
    await uow.stock.hold(skus)


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
