"""The shipment of one order: scheduled on confirmation, then dispatched or cancelled.

The shipment is where cancel and dispatch race, so it decides: one row, one state change
under a lock, one winner. The loser's request is a no-op and the order follows the winner.

An address change races with dispatch the same way: it is applied while the shipment is
SCHEDULED and ignored once it left; ``ShipmentDispatched`` carries the address the parcel
went to, and the order adopts it.
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID, uuid4

from shared.contracts.catalog import (
    Address,
    ShipmentCancelled,
    ShipmentDispatched,
    ShipmentScheduled,
)
from shared.writing.aggregate import Aggregate, DomainEvent


class ShipmentStatus(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    DISPATCHED = "DISPATCHED"
    CANCELLED = "CANCELLED"


class ShipmentRedirected(DomainEvent):
    """The address changed before dispatch: shipping's own fact, not published."""

    order_id: UUID
    shipping_address: Address


class Shipment(Aggregate):
    def __init__(
        self,
        order_id: UUID,
        shipment_id: UUID,
        status: ShipmentStatus,
        dispatch_at: datetime,
        created_at: datetime,
        updated_at: datetime,
        shipping_address: Address | None = None,
        dispatch_error: str | None = None,
    ) -> None:
        super().__init__()
        # Why the dispatcher set this SCHEDULED shipment aside instead of dispatching it; it
        # takes it again once an operator clears this. Written by the dispatcher alone
        # (``ShipmentRepository.set_aside``): the shipment may be what failed to load.
        self.dispatch_error = dispatch_error
        # None only for a shipment that never knew it: cancelled before scheduling, or
        # scheduled before addresses were kept.
        self.shipping_address = shipping_address
        self.order_id = order_id
        self.aggregate_id = str(order_id)
        self.shipment_id = shipment_id
        self.status = status
        self.dispatch_at = dispatch_at
        self.created_at = created_at
        self.updated_at = updated_at

    @classmethod
    def schedule(
        cls, order_id: UUID, address: Address, *, now: datetime, dispatch_at: datetime
    ) -> Shipment:
        shipment = cls(order_id, uuid4(), ShipmentStatus.SCHEDULED, dispatch_at, now, now, address)
        shipment.record(
            ShipmentScheduled(
                order_id=order_id, shipment_id=shipment.shipment_id, dispatch_at=dispatch_at
            )
        )
        return shipment

    @classmethod
    def cancelled_before_scheduling(cls, order_id: UUID, *, now: datetime) -> Shipment:
        """A cancellation that finds no shipment still gets an answer the order can follow."""
        shipment = cls(order_id, uuid4(), ShipmentStatus.CANCELLED, now, now, now)
        shipment.record(ShipmentCancelled(order_id=order_id, shipment_id=shipment.shipment_id))
        return shipment

    def redirect(self, address: Address, now: datetime) -> bool:
        """Ship to ``address`` instead, if the parcel has not left; whether it applied."""
        if self.status is not ShipmentStatus.SCHEDULED:
            return False  # too late: ShipmentDispatched told the order where it went
        if address != self.shipping_address:
            self.shipping_address = address
            self.updated_at = now
            self.record(ShipmentRedirected(order_id=self.order_id, shipping_address=address))
        return True

    def dispatch(self, now: datetime) -> None:
        if self.status is ShipmentStatus.SCHEDULED:
            self._become(ShipmentStatus.DISPATCHED, now)
            self.record(
                ShipmentDispatched(
                    order_id=self.order_id,
                    shipment_id=self.shipment_id,
                    shipping_address=self.shipping_address,
                )
            )

    def cancel(self, now: datetime) -> None:
        """Cancel unless already dispatched; then dispatch has won and ShipmentDispatched,
        already on its way, tells the order so."""
        if self.status is ShipmentStatus.SCHEDULED:
            self._become(ShipmentStatus.CANCELLED, now)
            self.record(ShipmentCancelled(order_id=self.order_id, shipment_id=self.shipment_id))

    def _become(self, status: ShipmentStatus, now: datetime) -> None:
        self.status = status
        self.updated_at = now
