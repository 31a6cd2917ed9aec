"""What a client can ask of the order service, and how each request is carried out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4

from order.domain.order import Order
from order.repository import IdempotencyRecord, OrderUnitOfWork
from shared.contracts.catalog import Address, OrderLine
from shared.observability.correlation import (
    correlated,
    current_causation_id,
    current_correlation_id,
)
from shared.writing.aggregate import DomainError, NotFoundError


class IdempotencyConflictError(DomainError):
    pass


class OrderNotFoundError(NotFoundError):
    pass


@dataclass(frozen=True)
class PlaceOrder:
    customer_id: str
    items: tuple[OrderLine, ...]
    shipping_address: Address
    idempotency_key: str | None = None

    def request_hash(self) -> str:
        canonical = "|".join(
            [
                self.customer_id,
                ";".join(f"{line.sku}:{line.quantity}" for line in self.items),
                self.shipping_address.model_dump_json(),
            ]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


async def place_order(
    command: PlaceOrder, uow: OrderUnitOfWork, *, look_first: bool = True
) -> Order:
    """Write the order and its OrderPlaced event in one transaction. The same idempotency
    key with the same request returns the first order; with another request it conflicts.
    With ``look_first=False`` the key's record is not read first: a key already taken
    raises DuplicateIdempotencyKeyError when the order is inserted (see
    ``shared.service.http.with_idempotency_key``, which then calls again, looking first).

    Its SKUs are not checked here: this service hears of a SKU only a moment after inventory
    has it (the catalog follows ``stock``), and inventory decides anyway, reserving every
    line or none; an order for a SKU it does not hold ends REJECTED with the reason.

    The order joins the correlation in effect (see :mod:`shared.observability.correlation`),
    the same one the outbox stamps on OrderPlaced: one source, so the two cannot disagree."""
    if command.idempotency_key is not None and look_first:
        existing = await uow.orders.by_idempotency_key(command.idempotency_key)
        if existing is not None:
            order, request_hash = existing
            if request_hash != command.request_hash():
                raise IdempotencyConflictError(
                    f"Idempotency-Key {command.idempotency_key!r} was used for another request"
                )
            return order
    order = Order.place(
        uuid4(),
        command.customer_id,
        command.items,
        command.shipping_address,
        correlation_id=current_correlation_id(),
        now=datetime.now(UTC),
    )
    idempotency = (
        IdempotencyRecord(command.idempotency_key, command.request_hash())
        if command.idempotency_key is not None
        else None
    )
    uow.orders.add(order, idempotency)
    await uow.commit()
    return order


async def cancel_order(order_id: UUID, uow: OrderUnitOfWork) -> Order:
    """Cancel; the events it causes join the order's flow (its correlation id), whatever
    correlation id the cancel request came with, so one id follows the order to the end."""
    order = await uow.orders.get(order_id)
    if order is None:
        raise OrderNotFoundError(f"no order {order_id}")
    with correlated(order.correlation_id, current_causation_id()):
        order.cancel(datetime.now(UTC))
        await uow.commit()
    return order


async def change_shipping_address(order_id: UUID, address: Address, uow: OrderUnitOfWork) -> Order:
    """Record the new address now; the event that tells the other services goes out once the
    edits stop (debounced), with the order's correlation id, like a cancel's."""
    order = await uow.orders.get(order_id)
    if order is None:
        raise OrderNotFoundError(f"no order {order_id}")
    with correlated(order.correlation_id, current_causation_id()):
        order.change_shipping_address(address, datetime.now(UTC))
        await uow.commit()
    return order
