"""In-memory fakes of the shipping service's ports, for unit tests (never imported by the
service itself). The contract tests hold them to the PostgreSQL adapters' behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from shared.testing.fakes import InMemoryUnitOfWork, stored_copy
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.repository import DueShipment, Flow, ShipmentRepository, ShippingUnitOfWork


class InMemoryShipmentRepository(ShipmentRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, Shipment] = uow.table("shipments")
        self._contexts: dict[UUID, Flow] = uow.table("shipment_contexts")

    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Shipment]:
        return [stored_copy(self._rows[i]) for i in sorted(order_ids) if i in self._rows]

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

    async def _write_all(
        self, added: Sequence[tuple[Shipment, Flow]], changed: Sequence[Shipment]
    ) -> None:
        for shipment, flow in added:
            self._contexts.setdefault(shipment.order_id, flow)  # as the upsert keeps the first
            self._rows[shipment.order_id] = stored_copy(shipment)
        for shipment in changed:
            self._rows[shipment.order_id] = stored_copy(shipment)


class FakeShippingUnitOfWork(InMemoryUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = InMemoryShipmentRepository(self)
