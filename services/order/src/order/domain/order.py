"""The order aggregate and its life cycle.

    PENDING --InventoryReserved--> CONFIRMED --ShipmentDispatched--> SHIPPED
       |  \\--InventoryRejected--> REJECTED       |
       |                                         cancel
       cancel                                    v
       v                                     CANCELLING --ShipmentCancelled--> CANCELLED
    CANCELLED                                    \\--ShipmentDispatched--> SHIPPED (dispatch won)

Shipping decides the cancel-versus-dispatch race (one shipment row, one winner); the order
follows whichever event comes back. Late or repeated events that no longer apply are no-ops.

The shipping address may change until the order ends. Each edit is a domain event,
``ShippingAddressEdited``; only the last of a burst crosses Kafka, debounced, as
``OrderShippingAddressChanged``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from shared.contracts.catalog import (
    Address,
    OrderCancellationRequested,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    OrderShipped,
    OrderShippingAddressChanged,
)
from shared.writing.aggregate import Aggregate, DomainError, DomainEvent


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLING = "CANCELLING"
    SHIPPED = "SHIPPED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({OrderStatus.SHIPPED, OrderStatus.REJECTED, OrderStatus.CANCELLED})


class CancelTooLateError(DomainError):
    pass


class AddressChangeTooLateError(DomainError):
    pass


class ShippingAddressEdited(DomainEvent):
    """One edit of the address: chatty, kept inside; published debounced."""

    order_id: UUID
    shipping_address: Address

    def published_as(self) -> OrderShippingAddressChanged:
        return OrderShippingAddressChanged(
            order_id=self.order_id, shipping_address=self.shipping_address
        )


class Order(Aggregate):
    def __init__(
        self,
        order_id: UUID,
        customer_id: str,
        items: tuple[OrderLine, ...],
        shipping_address: Address,
        *,
        status: OrderStatus,
        version: int,
        correlation_id: str,
        created_at: datetime,
        updated_at: datetime,
    ) -> None:
        super().__init__()
        self.order_id = order_id
        self.aggregate_id = str(order_id)
        self.customer_id = customer_id
        self.items = items
        self.shipping_address = shipping_address
        self.status = status
        self.version = version
        self.correlation_id = correlation_id
        self.created_at = created_at
        self.updated_at = updated_at

    @classmethod
    def place(
        cls,
        order_id: UUID,
        customer_id: str,
        items: tuple[OrderLine, ...],
        shipping_address: Address,
        *,
        correlation_id: str,
        now: datetime,
    ) -> Order:
        if not items:
            raise DomainError("an order needs at least one line")
        skus = [line.sku for line in items]
        if len(set(skus)) != len(skus):
            raise DomainError("each SKU may appear on one line only")
        order = cls(
            order_id,
            customer_id,
            items,
            shipping_address,
            status=OrderStatus.PENDING,
            version=1,
            correlation_id=correlation_id,
            created_at=now,
            updated_at=now,
        )
        order.record(
            OrderPlaced(
                order_id=order_id,
                customer_id=customer_id,
                items=items,
                shipping_address=shipping_address,
            )
        )
        return order

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def confirm(self, now: datetime) -> None:
        # A reservation that arrives after a cancel is released by inventory (it reads our
        # OrderCancelled), so here it is simply ignored.
        if self.status is OrderStatus.PENDING:
            self._become(OrderStatus.CONFIRMED, now)
            self.record(
                OrderConfirmed(
                    order_id=self.order_id, items=self.items, shipping_address=self.shipping_address
                )
            )

    def reject(self, reason: str, now: datetime) -> None:
        if self.status is OrderStatus.PENDING:
            self._become(OrderStatus.REJECTED, now)
            self.record(OrderRejected(order_id=self.order_id, reason=reason))

    def cancel(self, now: datetime) -> None:
        """Ask to cancel. Before confirmation it takes effect at once; after, shipping must
        agree first (CANCELLING). Too late once shipped or rejected."""
        match self.status:
            case OrderStatus.PENDING:
                self._become(OrderStatus.CANCELLED, now)
                self.record(OrderCancelled(order_id=self.order_id, reason="cancelled by customer"))
            case OrderStatus.CONFIRMED:
                self._become(OrderStatus.CANCELLING, now)
                self.record(OrderCancellationRequested(order_id=self.order_id))
            case OrderStatus.CANCELLING | OrderStatus.CANCELLED:
                pass  # asking again changes nothing
            case OrderStatus.SHIPPED | OrderStatus.REJECTED:
                raise CancelTooLateError(f"order {self.order_id} is already {self.status}")

    def change_shipping_address(self, address: Address, now: datetime) -> None:
        """Ship somewhere else; too late once the order ended. The same address again
        changes nothing."""
        if self.is_terminal:
            raise AddressChangeTooLateError(f"order {self.order_id} is already {self.status}")
        if address == self.shipping_address:
            return
        self.shipping_address = address
        self.version += 1
        self.updated_at = now
        self.record(ShippingAddressEdited(order_id=self.order_id, shipping_address=address))

    def shipment_dispatched(self, now: datetime, address: Address | None = None) -> None:
        """Shipped. ``address``, when shipping says it (v2), is where the parcel went: an
        address change that reached shipping too late loses to it, and the order shows it."""
        if self.status in (OrderStatus.CONFIRMED, OrderStatus.CANCELLING):
            if address is not None:
                self.shipping_address = address
            self._become(OrderStatus.SHIPPED, now)
            self.record(OrderShipped(order_id=self.order_id))
        elif self.status is not OrderStatus.SHIPPED:
            raise DomainError(f"shipment dispatched for order {self.order_id} in {self.status}")

    def shipment_cancelled(self, now: datetime) -> None:
        if self.status is OrderStatus.CANCELLING:
            self._become(OrderStatus.CANCELLED, now)
            self.record(OrderCancelled(order_id=self.order_id, reason="cancelled before dispatch"))

    def _become(self, status: OrderStatus, now: datetime) -> None:
        self.status = status
        self.version += 1
        self.updated_at = now
