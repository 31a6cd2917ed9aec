"""``PITFALL_NO_DEBOUNCE``: every change of an aggregate crosses Kafka at once.

A customer editing an address ten times sends ten ``ShippingAddressChanged``; a hot SKU
sends a ``StockChanged`` per reservation. Each is correct, yet the consumers do ten times
the work and see states that were already stale. The unit of work holds such events
instead (:func:`shared.writing.uow.debounced`) and the emitter sends the last one.
"""

from __future__ import annotations

from shared.contracts import IntegrationEvent
from shared.writing.uow import UnitOfWork


async def published_at_once(uow: UnitOfWork, event: IntegrationEvent, aggregate_id: str) -> int:
    await uow.outbox.append(event, aggregate_id=aggregate_id)
    return 1
