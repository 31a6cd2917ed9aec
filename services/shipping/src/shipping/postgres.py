"""The shipping service's PostgreSQL adapters."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

import asyncpg

from shared.contracts.catalog import Address
from shared.persistence.postgres import PostgresUnitOfWork
from shared.writing.uow import UnitOfWork
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.repository import (
    DueShipment,
    ShipmentRepository,
    ShippingUnitOfWork,
    UnreadableShipmentError,
    flow_context,
)


def _shipment(row: asyncpg.Record) -> Shipment:
    return Shipment(
        row["order_id"],
        row["shipment_id"],
        ShipmentStatus(row["status"]),
        row["dispatch_at"],
        row["created_at"],
        row["updated_at"],
        None
        if row["shipping_address"] is None
        else Address.model_validate_json(row["shipping_address"]),
        row["dispatch_error"],
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
            SELECT * FROM shipments
            WHERE status = 'SCHEDULED' AND dispatch_at <= $1 AND dispatch_error IS NULL
            ORDER BY dispatch_at LIMIT $2
            FOR UPDATE SKIP LOCKED
            """,
            now,
            limit,
        )
        due = []
        for r in rows:
            try:
                shipment = _shipment(r)
            except ValueError as exc:  # pydantic's ValidationError is one
                raise UnreadableShipmentError(
                    r["order_id"], f"{type(exc).__name__}: {exc}"
                ) from exc
            due.append(DueShipment(shipment, r["correlation_id"], json.loads(r["trace_headers"])))
        return due

    async def set_aside(self, order_id: UUID, reason: str) -> str | None:
        correlation_id: str | None = await self._conn.fetchval(
            """
            UPDATE shipments SET dispatch_error = $2, updated_at = now()
            WHERE order_id = $1 AND status = 'SCHEDULED' AND dispatch_error IS NULL
            RETURNING correlation_id
            """,
            order_id,
            reason,
        )
        return correlation_id

    async def _save(self, shipment: Shipment) -> None:
        correlation_id, trace_headers = flow_context()
        await self._conn.execute(
            """
            INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                                   updated_at, correlation_id, trace_headers, shipping_address)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (order_id) DO UPDATE
            SET status = $3, updated_at = $6, shipping_address = $9
            """,
            shipment.order_id,
            shipment.shipment_id,
            shipment.status.value,
            shipment.dispatch_at,
            shipment.created_at,
            shipment.updated_at,
            correlation_id,
            json.dumps(trace_headers),
            None
            if shipment.shipping_address is None
            else shipment.shipping_address.model_dump_json(),
        )


class PostgresShippingUnitOfWork(PostgresUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = PostgresShipmentRepository(self, self.conn)
