"""Shipments behind a port, with Postgres and in-memory implementations."""

from __future__ import annotations

import json
from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
from opentelemetry import propagate

from shared.correlation import current_correlation_id
from shared.repository import TrackingRepository
from shared.uow import InMemoryUnitOfWork, PostgresUnitOfWork, UnitOfWork
from shipping.domain.shipment import Shipment, ShipmentStatus


@dataclass(frozen=True)
class DueShipment:
    """A shipment whose time has come, with the correlation id and trace context of the flow
    that scheduled it, so its dispatch continues that flow."""

    order_id: UUID
    correlation_id: str
    trace_headers: dict[str, str]


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
        """Scheduled shipments whose time has come, oldest first (not locked: dispatch each
        with ``get``, which locks, and re-checks its status)."""
        return await self._due(now, limit)

    @abstractmethod
    async def _get(self, order_id: UUID, *, lock: bool) -> Shipment | None: ...

    @abstractmethod
    async def _due(self, now: datetime, limit: int) -> list[DueShipment]: ...


class ShippingUnitOfWork(UnitOfWork):
    shipments: ShipmentRepository

    async def _persist(self) -> None:
        await self.shipments.persist()


def _shipment(row: asyncpg.Record) -> Shipment:
    return Shipment(
        row["order_id"],
        row["shipment_id"],
        ShipmentStatus(row["status"]),
        row["dispatch_at"],
        row["created_at"],
        row["updated_at"],
    )


class PostgresShipmentRepository(ShipmentRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _get(self, order_id: UUID, *, lock: bool) -> Shipment | None:
        query = "SELECT * FROM shipments WHERE order_id = $1" + (" FOR UPDATE" if lock else "")
        row = await self._conn.fetchrow(query, order_id)
        return None if row is None else _shipment(row)

    async def _due(self, now: datetime, limit: int) -> list[DueShipment]:
        rows = await self._conn.fetch(
            """
            SELECT order_id, correlation_id, trace_headers FROM shipments
            WHERE status = 'SCHEDULED' AND dispatch_at <= $1
            ORDER BY dispatch_at LIMIT $2
            """,
            now,
            limit,
        )
        return [
            DueShipment(r["order_id"], r["correlation_id"], json.loads(r["trace_headers"]))
            for r in rows
        ]

    async def _save(self, shipment: Shipment) -> None:
        correlation_id, trace_headers = flow_context()
        await self._conn.execute(
            """
            INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                                   updated_at, correlation_id, trace_headers)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (order_id) DO UPDATE SET status = $3, updated_at = $6
            """,
            shipment.order_id,
            shipment.shipment_id,
            shipment.status.value,
            shipment.dispatch_at,
            shipment.created_at,
            shipment.updated_at,
            correlation_id,
            json.dumps(trace_headers),
        )


class PostgresShippingUnitOfWork(PostgresUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = PostgresShipmentRepository(self, self.conn)


def _copy(s: Shipment) -> Shipment:
    return Shipment(s.order_id, s.shipment_id, s.status, s.dispatch_at, s.created_at, s.updated_at)


class InMemoryShipmentRepository(ShipmentRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, Shipment] = uow.table("shipments")
        self._contexts: dict[UUID, tuple[str, dict[str, str]]] = uow.table("shipment_contexts")

    async def _get(self, order_id: UUID, *, lock: bool) -> Shipment | None:
        found = self._rows.get(order_id)
        return None if found is None else _copy(found)

    async def _due(self, now: datetime, limit: int) -> list[DueShipment]:
        due = sorted(
            (
                s
                for s in self._rows.values()
                if s.status is ShipmentStatus.SCHEDULED and s.dispatch_at <= now
            ),
            key=lambda s: s.dispatch_at,
        )
        return [DueShipment(s.order_id, *self._contexts[s.order_id]) for s in due[:limit]]

    async def _save(self, shipment: Shipment) -> None:
        self._contexts.setdefault(shipment.order_id, flow_context())
        self._rows[shipment.order_id] = _copy(shipment)


class FakeShippingUnitOfWork(InMemoryUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = InMemoryShipmentRepository(self)
