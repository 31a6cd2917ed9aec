"""Every integration event of the suite, grouped by the topic it travels on.

Topics ``orders``, ``inventory`` and ``shipping`` are keyed by order id; ``stock`` by SKU.
Every topic is FULL_TRANSITIVE (see :class:`shared.contracts.Compatibility`): a new field is
optional with a default; a field is never removed, renamed, retyped or narrowed. A breaking
change is a new event type. Each version is committed as a JSON Schema in ``shared/schemas``
(``make schemas``) and ``make schema-check`` holds the models to it, so the current model
reads every older version: a new version replaces its model here, and the older one's
schema file stays. Only an older version whose data must be transformed (derived, converted)
keeps a model, named ``...V<n>``, next to the upcaster that turns it into the next one.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import Field

from shared.contracts import IntegrationEvent, Payload, integration_event
from shared.service.text import Text

ORDER_ID = "The order's id; also the record key on this topic."


# Request bodies are made of these two, so their text refuses control characters (Text).
class OrderLine(Payload):
    sku: Text = Field(min_length=1, max_length=64, description="The stock-keeping unit.")
    quantity: int = Field(gt=0, le=10_000, description="Units of the SKU, 1 to 10 000.")


class Address(Payload):
    line1: Text = Field(min_length=1, max_length=200, description="Street and number.")
    city: Text = Field(min_length=1, max_length=100, description="City.")
    postal_code: Text = Field(min_length=1, max_length=20, description="Postal code.")
    country: Text = Field(
        min_length=2, max_length=2, pattern="^[A-Z]{2}$", description="ISO 3166-1 alpha-2."
    )


class Shortfall(Payload):
    sku: str = Field(description="An SKU of the order that could not be reserved.")
    wanted: int = Field(description="Units the order asked for.")
    available: int | None = Field(
        default=None, description="Units available then; null when inventory does not know it."
    )


# --- topic "orders": source order, aggregate order ---------------------------------------


@integration_event(topic="orders", aggregate_type="order")
class OrderPlaced(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    customer_id: str = Field(description="Who placed the order.")
    items: tuple[OrderLine, ...] = Field(description="The lines to reserve, in order.")
    shipping_address: Address = Field(description="Where to ship, as placed.")


@integration_event(topic="orders", aggregate_type="order")
class OrderConfirmed(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    items: tuple[OrderLine, ...] = Field(description="The lines reserved.")
    shipping_address: Address = Field(description="Where to ship.")


@integration_event(topic="orders", aggregate_type="order")
class OrderRejected(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    reason: str = Field(description="Why, for people.")


@integration_event(topic="orders", aggregate_type="order")
class OrderCancellationRequested(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)


@integration_event(topic="orders", aggregate_type="order")
class OrderCancelled(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    reason: str = Field(description="Why, for people.")


@integration_event(topic="orders", aggregate_type="order")
class OrderShipped(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)


@integration_event(topic="orders", aggregate_type="order")
class OrderShippingAddressChanged(IntegrationEvent):
    """Debounced at the source: one per burst of edits, with the final address, once the
    order has had no edit for a quiet period (or after a maximum wait)."""

    order_id: UUID = Field(description=ORDER_ID)
    shipping_address: Address = Field(description="Where to ship from now on.")


# --- topic "inventory": source inventory, aggregate reservation (id = order id) -------------


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryReserved(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    items: tuple[OrderLine, ...] = Field(description="The lines reserved.")


@integration_event(topic="inventory", aggregate_type="reservation", version=2)
class InventoryRejected(IntegrationEvent):
    """v2 adds ``shortfalls``, optional: a v1 reader ignores it, a v2 reader of a v1 event
    gets none and keeps to ``reason``."""

    order_id: UUID = Field(description=ORDER_ID)
    reason: str = Field(description="Why, for people: every shortfall, joined by '; '.")
    shortfalls: tuple[Shortfall, ...] = Field(
        default=(), description="Since v2: each line that could not be reserved; empty in v1."
    )


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryReleased(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)


@integration_event(topic="inventory", aggregate_type="reservation")
class InventoryShipped(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)


# --- topic "stock": source inventory, aggregate stock (id = SKU) ----------------------------


# Debounced at the source: the levels after a burst of stock movements of one SKU. (A comment,
# not a docstring: the docstring is part of the committed schema of v1.)
@integration_event(topic="stock", aggregate_type="stock")
class StockLevelChanged(IntegrationEvent):
    sku: str = Field(description="The SKU; also the record key on this topic.")
    available: int = Field(description="Units free to reserve.")
    reserved: int = Field(description="Units held by reservations.")
    shipped: int = Field(description="Units shipped so far.")


# --- topic "shipping": source shipping, aggregate shipment (id = order id) -------------------


@integration_event(topic="shipping", aggregate_type="shipment")
class ShipmentScheduled(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    shipment_id: UUID = Field(description="The shipment's own id.")
    dispatch_at: datetime = Field(description="When the dispatcher will send it (UTC).")


@integration_event(topic="shipping", aggregate_type="shipment", version=2)
class ShipmentDispatched(IntegrationEvent):
    """v2 adds ``shipping_address``, optional: where the parcel went. It settles the race of
    an address change with dispatch: the order ends showing this address. A v1 reader
    ignores it; a v2 reader of a v1 event gets none and keeps the order's own address."""

    order_id: UUID = Field(description=ORDER_ID)
    shipment_id: UUID = Field(description="The shipment's own id.")
    shipping_address: Address | None = Field(
        default=None,
        description="Since v2: the address the parcel was dispatched to; null in v1 or when"
        " shipping did not know it.",
    )


@integration_event(topic="shipping", aggregate_type="shipment")
class ShipmentCancelled(IntegrationEvent):
    order_id: UUID = Field(description=ORDER_ID)
    shipment_id: UUID = Field(description="The shipment's own id.")
