"""Every integration event of the suite, grouped by the topic it travels on.

Topics ``orders``, ``inventory`` and ``shipping`` are keyed by order id; ``stock`` by SKU.
Adding a field is compatible; renaming, removing or retyping one needs a new version.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import Field

from shared.contracts import Payload, integration_event
from shared.text import Text


# Request bodies are made of these two, so their text refuses control characters (Text).
class OrderLine(Payload):
    sku: Text = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=10_000)


class Address(Payload):
    line1: Text = Field(min_length=1, max_length=200)
    city: Text = Field(min_length=1, max_length=100)
    postal_code: Text = Field(min_length=1, max_length=20)
    country: Text = Field(min_length=2, max_length=2, pattern="^[A-Z]{2}$")


# --- topic "orders": source order, aggregate order ---------------------------------------


@integration_event(topic="orders", aggregate_type="order")
class OrderPlaced(Payload):
    order_id: UUID
    customer_id: str
    items: tuple[OrderLine, ...]
    shipping_address: Address


@integration_event(topic="orders", aggregate_type="order")
class OrderConfirmed(Payload):
    order_id: UUID
    items: tuple[OrderLine, ...]
    shipping_address: Address


@integration_event(topic="orders", aggregate_type="order")
class OrderRejected(Payload):
    order_id: UUID
    reason: str


@integration_event(topic="orders", aggregate_type="order")
class OrderCancellationRequested(Payload):
    order_id: UUID


@integration_event(topic="orders", aggregate_type="order")
class OrderCancelled(Payload):
    order_id: UUID
    reason: str


@integration_event(topic="orders", aggregate_type="order")
class OrderShipped(Payload):
    order_id: UUID


# --- topic "inventory": source inventory, aggregate reservation (id = order id) -------------


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryReserved(Payload):
    order_id: UUID
    items: tuple[OrderLine, ...]


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryRejected(Payload):
    order_id: UUID
    reason: str


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryReleased(Payload):
    order_id: UUID


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryShipped(Payload):
    order_id: UUID


# --- topic "stock": source inventory, aggregate stock (id = SKU) ----------------------------


@integration_event(topic="stock", aggregate_type="stock")
class StockLevelChanged(Payload):
    sku: str
    available: int
    reserved: int
    shipped: int


# --- topic "shipping": source shipping, aggregate shipment (id = order id) -------------------


@integration_event(topic="shipping", aggregate_type="shipment")
class ShipmentScheduled(Payload):
    order_id: UUID
    shipment_id: UUID
    dispatch_at: datetime


@integration_event(topic="shipping", aggregate_type="shipment")
class ShipmentDispatched(Payload):
    order_id: UUID
    shipment_id: UUID


@integration_event(topic="shipping", aggregate_type="shipment")
class ShipmentCancelled(Payload):
    order_id: UUID
    shipment_id: UUID
