"""The shipping service's persistence port: shipments, and its unit of work. The PostgreSQL
adapter is in :mod:`shipping.postgres`, the in-memory fake for unit tests in
:mod:`shipping.testing`; the contract tests run the same cases against both."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from opentelemetry import propagate

from shared.observability.correlation import current_correlation_id
from shared.writing.repository import TrackingRepository
from shared.writing.uow import UnitOfWork
from shipping.domain.shipment import Shipment


@dataclass(frozen=True)
class DueShipment:
    """A shipment whose time has come, with the correlation id and trace context of the flow
    that scheduled it, so its dispatch continues that flow."""

    shipment: Shipment
    correlation_id: str
    trace_headers: dict[str, str]

    @property
    def order_id(self) -> UUID:
        return self.shipment.order_id


class UnreadableShipmentError(Exception):
    """A stored shipment that does not load (a value the current model refuses)."""

    def __init__(self, order_id: UUID, reason: str) -> None:
        super().__init__(f"shipment of order {order_id} does not load: {reason}")
        self.order_id = order_id


def flow_context() -> tuple[str, dict[str, str]]:
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return current_correlation_id(), headers


class ShipmentRepository(TrackingRepository[Shipment]):
    async def get(self, order_id: UUID) -> Shipment | None:
        """Locked until commit, and saved at commit if it changed."""
        shipment = await self._get(order_id, lock=True)
        return None if shipment is None else self.track(shipment)

    async def read(self, order_id: UUID) -> Shipment | None:
        """For display: neither locked nor tracked."""
        return await self._get(order_id, lock=False)

    async def due(self, now: datetime, limit: int) -> list[DueShipment]:
        """Scheduled shipments whose time has come, oldest first, locked until commit; one
        that another transaction holds is skipped (another dispatcher's, or a cancellation
        in flight: the next pass sees it), and so is one set aside. Tracked: saved at commit
        if dispatched. Raises UnreadableShipmentError for one that does not load."""
        due = await self._due(now, limit)
        for item in due:
            self.track(item.shipment)
        return due

    @abstractmethod
    async def set_aside(self, order_id: UUID, reason: str) -> str | None:
        """Record why the dispatcher could not dispatch this shipment (``dispatch_error``),
        and so take it out of ``due``: it stays SCHEDULED (a cancellation still wins) until
        an operator clears the reason. Written to storage directly, not through the
        aggregate, which may be what failed to load. Returns the correlation id of its flow,
        or None when it is no longer a scheduled shipment that is not set aside."""

    @abstractmethod
    async def _get(self, order_id: UUID, *, lock: bool) -> Shipment | None: ...

    @abstractmethod
    async def _due(self, now: datetime, limit: int) -> list[DueShipment]: ...


class ShippingUnitOfWork(UnitOfWork):
    shipments: ShipmentRepository

    async def _persist(self) -> None:
        await self.shipments.persist()
