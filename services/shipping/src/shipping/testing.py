"""In-memory fakes of the shipping service's ports, for unit tests (never imported by the
service itself). The contract tests hold them to the PostgreSQL adapters' behaviour."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from shared.testing.fakes import InMemoryUnitOfWork, stored_copy
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.repository import DueShipment, ShipmentRepository, ShippingUnitOfWork, flow_context


class InMemoryShipmentRepository(ShipmentRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, Shipment] = uow.table("shipments")
        self._contexts: dict[UUID, tuple[str, dict[str, str]]] = uow.table("shipment_contexts")

    async def _get(self, order_id: UUID, *, lock: bool) -> Shipment | None:
        found = self._rows.get(order_id)
        return None if found is None else stored_copy(found)

    async def _due(self, now: datetime, limit: int) -> list[DueShipment]:
        due = sorted(
            (
                s
                for s in self._rows.values()
                if s.status is ShipmentStatus.SCHEDULED
                and s.dispatch_at <= now
                and s.dispatch_error is None
            ),
            key=lambda s: s.dispatch_at,
        )
        return [DueShipment(stored_copy(s), *self._contexts[s.order_id]) for s in due[:limit]]

    async def set_aside(self, order_id: UUID, reason: str) -> str | None:
        found = self._rows.get(order_id)
        if found is None or found.status is not ShipmentStatus.SCHEDULED or found.dispatch_error:
            return None
        found.dispatch_error = reason
        found.updated_at = datetime.now(UTC)
        return self._contexts[order_id][0]

    async def _save(self, shipment: Shipment) -> None:
        self._contexts.setdefault(shipment.order_id, flow_context())
        self._rows[shipment.order_id] = stored_copy(shipment)


class FakeShippingUnitOfWork(InMemoryUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = InMemoryShipmentRepository(self)
