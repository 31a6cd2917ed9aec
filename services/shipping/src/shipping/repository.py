"""The shipping service's persistence port: shipments, and its unit of work. The PostgreSQL
adapter is in :mod:`shipping.postgres`, the in-memory fake for unit tests in
:mod:`shipping.testing`; the contract tests run the same cases against both."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from opentelemetry import propagate

from shared.observability.correlation import current_correlation_id
from shared.writing.repository import TrackingRepository
from shared.writing.uow import UnitOfWork
from shipping.domain.shipment import Shipment

Flow = tuple[str, dict[str, str]]  # a correlation id and the trace headers of its context


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


def flow_context() -> Flow:
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return current_correlation_id(), headers


class ShipmentRepository(TrackingRepository[UUID, Shipment]):
    """A shipment per order, locked by ``get`` and ``load_all`` until commit. Each new one
    is stored with the flow it was added in (``add``), which its dispatch continues."""

    def __init__(self, uow: UnitOfWork) -> None:
        super().__init__(uow)
        self._flows: dict[UUID, Flow] = {}

    def add(self, shipment: Shipment) -> Shipment:
        """A new shipment, inserted at commit with the flow in effect now: the commit runs
        after the batch's last event, outside the context of the event that added it."""
        self._flows[shipment.order_id] = flow_context()
        return super().add(shipment)

    async def read(self, order_id: UUID) -> Shipment | None:
        """For display: neither locked nor tracked."""
        found = await self._get_all([order_id], lock=False)
        return found[0] if found else None

    async def due(self, now: datetime, limit: int) -> list[DueShipment]:
        """Scheduled shipments whose time has come, oldest first, locked until commit; one
        that another transaction holds is skipped (another dispatcher's, or a cancellation
        in flight: the next pass sees it), and so is one set aside. Tracked: saved at commit
        if dispatched, and handed out by ``get`` as they are. Raises UnreadableShipmentError
        for one that does not load."""
        return [
            replace(item, shipment=self._held(item.shipment))
            for item in await self._due(now, limit)
        ]

    def _held(self, shipment: Shipment) -> Shipment:
        """The object this transaction holds of ``shipment``: this one, tracked, if none."""
        held = self._tracked.get(shipment.aggregate_id)
        return self.track(shipment) if held is None else held

    async def _lock_all(self, order_ids: Sequence[UUID]) -> list[Shipment]:
        return await self._get_all(order_ids, lock=True)

    async def _write(self, added: Sequence[Shipment], changed: Sequence[Shipment]) -> None:
        new = sorted(added, key=_order_id)
        await self._write_all(
            [(s, self._flows[s.order_id]) for s in new], sorted(changed, key=_order_id)
        )

    @abstractmethod
    async def set_aside(self, order_id: UUID, reason: str) -> str | None:
        """Record why the dispatcher could not dispatch this shipment (``dispatch_error``),
        and so take it out of ``due``: it stays SCHEDULED (a cancellation still wins) until
        an operator clears the reason. Written to storage directly, not through the
        aggregate, which may be what failed to load. Returns the correlation id of its flow,
        or None when it is no longer a scheduled shipment that is not set aside."""

    @abstractmethod
    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Shipment]:
        """The shipments found, in order_id order (locked in that order with ``lock``)."""

    @abstractmethod
    async def _due(self, now: datetime, limit: int) -> list[DueShipment]: ...

    @abstractmethod
    async def _write_all(
        self, added: Sequence[tuple[Shipment, Flow]], changed: Sequence[Shipment]
    ) -> None:
        """Insert the new shipments, each with its flow, and save the changed ones (their
        status and address: the flow stays the one they were scheduled in), all in one
        statement, in the order given (order_id order)."""


def _order_id(shipment: Shipment) -> UUID:
    return shipment.order_id


class ShippingUnitOfWork(UnitOfWork):
    shipments: ShipmentRepository

    async def _persist(self) -> None:
        await self.shipments.persist()
