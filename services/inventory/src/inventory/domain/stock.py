"""Stock per SKU and reservations per order.

A reservation takes every line of an order or none of them. Stock moves between three
buckets and is never created or destroyed by the flow: ``available`` (can be reserved),
``reserved`` (held for an order) and ``shipped`` (left with a dispatched shipment).

Every movement is a domain event, ``StockMoved``; a hot SKU moves many times a second, so
only the levels after a burst cross Kafka, debounced, as ``StockLevelChanged``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from shared.contracts.catalog import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    InventoryShipped,
    OrderLine,
    Shortfall,
    StockLevelChanged,
)
from shared.writing.aggregate import Aggregate, DomainError, DomainEvent

# The most units a SKU may ever hold in all: available + reserved + shipped. The flow only
# moves units between the three, so only a restock can add to the total, and refusing one
# past this keeps every counter in range forever: far inside the 64-bit columns, and exact
# as a JSON number (2^53) for any client.
MAX_STOCK_UNITS = 10**15


class StockOverflowError(DomainError):
    """A restock that would put a SKU's total over :data:`MAX_STOCK_UNITS`."""


class StockMoved(DomainEvent):
    """The levels of one SKU after one movement: chatty, kept inside; published debounced."""

    sku: str
    available: int
    reserved: int
    shipped: int

    def published_as(self) -> StockLevelChanged:
        return StockLevelChanged(
            sku=self.sku, available=self.available, reserved=self.reserved, shipped=self.shipped
        )


@dataclass(frozen=True)
class StockLevels:
    """The three counters of one SKU at one moment."""

    sku: str
    available: int
    reserved: int
    shipped: int

    @classmethod
    def of(cls, stock: Stock) -> StockLevels:
        return cls(stock.sku, stock.available, stock.reserved, stock.shipped)


class Stock(Aggregate):
    def __init__(self, sku: str, available: int = 0, reserved: int = 0, shipped: int = 0) -> None:
        super().__init__()
        self.sku = self.aggregate_id = sku
        self.available = available
        self.reserved = reserved
        self.shipped = shipped

    def restock(self, available: int) -> None:
        """Set the quantity on hand that is free to reserve (reservations are untouched): an
        operator's absolute set. Deliveries use :meth:`add`."""
        if available < 0:
            raise DomainError("available stock cannot be negative")
        if available + self.reserved + self.shipped > MAX_STOCK_UNITS:
            raise StockOverflowError(
                f"{self.sku}: available {available} + reserved {self.reserved} + shipped"
                f" {self.shipped} would exceed the most a SKU can hold, {MAX_STOCK_UNITS}"
            )
        self.available = available
        self._changed()

    def add(self, quantity: int) -> None:
        """Put ``quantity`` more units on hand, free to reserve (a delivery): the same change,
        and the same events, as setting ``available`` to its current value plus ``quantity``."""
        if quantity <= 0:
            raise DomainError(f"a restock adds at least one unit, not {quantity}")
        if self.available + quantity + self.reserved + self.shipped > MAX_STOCK_UNITS:
            raise StockOverflowError(
                f"{self.sku}: adding {quantity} to available {self.available} + reserved"
                f" {self.reserved} + shipped {self.shipped} would exceed the most a SKU can"
                f" hold, {MAX_STOCK_UNITS}"
            )
        self.restock(self.available + quantity)

    def reserve(self, quantity: int) -> None:
        if quantity > self.available:
            raise DomainError(f"only {self.available} of {self.sku} available")
        self.available -= quantity
        self.reserved += quantity
        self._changed()

    def release(self, quantity: int) -> None:
        self._take_reserved(quantity)
        self.available += quantity
        self._changed()

    def ship(self, quantity: int) -> None:
        self._take_reserved(quantity)
        self.shipped += quantity
        self._changed()

    def _take_reserved(self, quantity: int) -> None:
        if quantity > self.reserved:
            raise DomainError(f"only {self.reserved} of {self.sku} reserved, not {quantity}")
        self.reserved -= quantity

    def _changed(self) -> None:
        self.record(
            StockMoved(
                sku=self.sku,
                available=self.available,
                reserved=self.reserved,
                shipped=self.shipped,
            )
        )


class ReservationStatus(enum.StrEnum):
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    RELEASED = "RELEASED"
    SHIPPED = "SHIPPED"


class Reservation(Aggregate):
    def __init__(
        self, order_id: UUID, items: tuple[OrderLine, ...], status: ReservationStatus
    ) -> None:
        super().__init__()
        self.order_id = order_id
        self.aggregate_id = str(order_id)
        self.items = items
        self.status = status

    @classmethod
    def reserve(
        cls, order_id: UUID, items: tuple[OrderLine, ...], stock: Mapping[str, Stock]
    ) -> Reservation:
        """All lines or none: check every line first, then take them."""
        shortfalls = []
        for line in items:
            found = stock.get(line.sku)
            if found is None or found.available < line.quantity:
                available = None if found is None else found.available
                shortfalls.append(
                    Shortfall(sku=line.sku, wanted=line.quantity, available=available)
                )
        if shortfalls:
            rejected = cls(order_id, items, ReservationStatus.REJECTED)
            reason = "; ".join(map(_described, shortfalls))
            rejected.record(
                InventoryRejected(order_id=order_id, reason=reason, shortfalls=tuple(shortfalls))
            )
            return rejected
        for line in items:
            stock[line.sku].reserve(line.quantity)
        reservation = cls(order_id, items, ReservationStatus.RESERVED)
        reservation.record(InventoryReserved(order_id=order_id, items=items))
        return reservation

    def release(self, stock: Mapping[str, Stock]) -> None:
        """Give the stock back when the order is cancelled; nothing to do if none was held."""
        if self.status is ReservationStatus.RESERVED:
            for line in self.items:
                stock[line.sku].release(line.quantity)
            self.status = ReservationStatus.RELEASED
            self.record(InventoryReleased(order_id=self.order_id))
        elif self.status is ReservationStatus.SHIPPED:
            raise DomainError(f"order {self.order_id} was cancelled after it shipped")

    def ship(self, stock: Mapping[str, Stock]) -> None:
        if self.status is ReservationStatus.RESERVED:
            for line in self.items:
                stock[line.sku].ship(line.quantity)
            self.status = ReservationStatus.SHIPPED
            self.record(InventoryShipped(order_id=self.order_id))
        elif self.status is not ReservationStatus.SHIPPED:
            raise DomainError(f"order {self.order_id} shipped with reservation {self.status}")


def _described(shortfall: Shortfall) -> str:
    if shortfall.available is None:
        return f"unknown SKU {shortfall.sku}"
    return f"{shortfall.sku}: {shortfall.wanted} wanted, {shortfall.available} available"
