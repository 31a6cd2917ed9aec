"""The shipping service's PostgreSQL adapters."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

import asyncpg

from shared.contracts.catalog import Address
from shared.postgres import PostgresUnitOfWork
from shared.uow import UnitOfWork
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.repository import DueShipment, ShipmentRepository, ShippingUnitOfWork, flow_context


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
            WHERE status = 'SCHEDULED' AND dispatch_at <= $1
            ORDER BY dispatch_at LIMIT $2
            FOR UPDATE SKIP LOCKED
            """,
            now,
            limit,
        )
        return [
            DueShipment(_shipment(r), r["correlation_id"], json.loads(r["trace_headers"]))
            for r in rows
        ]

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
