"""How inventory reacts to orders and shipments: load, call the domain; the consumer commits."""

from __future__ import annotations

from inventory.domain.stock import Reservation
from inventory.repository import InventoryUnitOfWork
from shared.contracts.catalog import OrderCancelled, OrderPlaced, ShipmentDispatched
from shared.domain import NotFoundError
from shared.routing import Router

router = Router[InventoryUnitOfWork]()


class UnknownReservationError(NotFoundError):
    pass


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
