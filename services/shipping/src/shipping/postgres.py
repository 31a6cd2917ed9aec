"""The shipping service's PostgreSQL adapters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from shared.contracts.catalog import Address
from shared.persistence.postgres import PostgresUnitOfWork
from shared.writing.uow import UnitOfWork
from shipping.domain.shipment import Shipment, ShipmentStatus
from shipping.repository import (
    DueShipment,
    Flow,
    ShipmentRepository,
    ShippingUnitOfWork,
    UnreadableShipmentError,
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

    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Shipment]:
        query = "SELECT * FROM shipments WHERE order_id = ANY($1::uuid[]) ORDER BY order_id"
        rows = await self._conn.fetch(query + (" FOR UPDATE" if lock else ""), order_ids)
        return [_shipment(r) for r in rows]

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

    async def _write_all(
        self, added: Sequence[tuple[Shipment, Flow]], changed: Sequence[Shipment]
    ) -> None:
        # The changed rows are locked since they were loaded; a new row that meets one
        # stored meanwhile takes its status and address, as the upsert of one always did.
        new = [shipment for shipment, _ in added]
        await self._conn.execute(
            """
            WITH saved AS (
                UPDATE shipments AS s
                SET status = c.status, updated_at = c.updated_at,
                    shipping_address = c.shipping_address::jsonb
                FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[])
                     AS c(order_id, status, updated_at, shipping_address)
                WHERE s.order_id = c.order_id
            )
            INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                                   updated_at, correlation_id, trace_headers, shipping_address)
            SELECT n.order_id, n.shipment_id, n.status, n.dispatch_at, n.created_at,
                   n.updated_at, n.correlation_id, n.trace_headers::jsonb,
                   n.shipping_address::jsonb
            FROM unnest($5::uuid[], $6::uuid[], $7::text[], $8::timestamptz[],
                        $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[],
                        $13::text[])
                 WITH ORDINALITY AS n(order_id, shipment_id, status, dispatch_at, created_at,
                                      updated_at, correlation_id, trace_headers,
                                      shipping_address, position)
            ORDER BY n.position
            ON CONFLICT (order_id) DO UPDATE
            SET status = excluded.status, updated_at = excluded.updated_at,
                shipping_address = excluded.shipping_address
            """,
            [s.order_id for s in changed],
            [s.status.value for s in changed],
            [s.updated_at for s in changed],
            [_address(s) for s in changed],
            [s.order_id for s in new],
            [s.shipment_id for s in new],
            [s.status.value for s in new],
            [s.dispatch_at for s in new],
            [s.created_at for s in new],
            [s.updated_at for s in new],
            [correlation_id for _, (correlation_id, _) in added],
            [json.dumps(headers) for _, (_, headers) in added],
            [_address(s) for s in new],
        )


def _address(shipment: Shipment) -> str | None:
    address = shipment.shipping_address
    return None if address is None else address.model_dump_json()


class PostgresShippingUnitOfWork(PostgresUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = PostgresShipmentRepository(self, self.conn)
