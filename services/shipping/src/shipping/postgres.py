"""The shipping service's PostgreSQL adapters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from shared.contracts.catalog import Address
from shared.persistence.postgres import PostgresUnitOfWork, rows_by_key
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
        rows = await rows_by_key(self._conn, "shipments", "order_id", order_ids, lock=lock)
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
        # One upsert for both: a changed shipment's row exists, so only the columns of the
        # ON CONFLICT branch are written, and it keeps the flow it was scheduled in (the
        # empty one given here is never stored). A new one that meets a row stored
        # meanwhile takes its status and address, as the upsert of one always did.
        rows = sorted([*added, *((s, _KEPT) for s in changed)], key=lambda r: r[0].order_id)
        shipments = [shipment for shipment, _ in rows]
        await self._conn.execute(
            """
            INSERT INTO shipments (order_id, shipment_id, status, dispatch_at, created_at,
                                   updated_at, correlation_id, trace_headers, shipping_address)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                                 $5::timestamptz[], $6::timestamptz[], $7::text[],
                                 $8::jsonb[], $9::jsonb[])
            ON CONFLICT (order_id) DO UPDATE
            SET status = excluded.status, updated_at = excluded.updated_at,
                shipping_address = excluded.shipping_address
            """,
            [s.order_id for s in shipments],
            [s.shipment_id for s in shipments],
            [s.status.value for s in shipments],
            [s.dispatch_at for s in shipments],
            [s.created_at for s in shipments],
            [s.updated_at for s in shipments],
            [correlation_id for _, (correlation_id, _) in rows],
            [json.dumps(headers) for _, (_, headers) in rows],
            [_address(s) for s in shipments],
        )


_KEPT: Flow = ("", {})  # a stored shipment's flow is not rewritten


def _address(shipment: Shipment) -> str | None:
    address = shipment.shipping_address
    return None if address is None else address.model_dump_json()


class PostgresShippingUnitOfWork(PostgresUnitOfWork, ShippingUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.shipments = PostgresShipmentRepository(self, self.conn)
