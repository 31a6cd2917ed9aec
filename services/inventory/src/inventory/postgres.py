"""The inventory service's PostgreSQL adapters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID

import asyncpg

from inventory.domain.stock import Reservation, ReservationStatus, Stock, StockLevels
from inventory.repository import (
    DuplicateIdempotencyKeyError,
    InventoryUnitOfWork,
    RecordedRestock,
    ReservationRepository,
    RestockLog,
    StockRepository,
)
from shared.contracts.catalog import OrderLine
from shared.persistence.postgres import PostgresUnitOfWork, rows_by_key
from shared.writing.uow import UnitOfWork


def _stock(row: asyncpg.Record) -> Stock:
    return Stock(row["sku"], row["available"], row["reserved"], row["shipped"])


class PostgresStockRepository(StockRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _lock_all(self, skus: Sequence[str]) -> list[Stock]:
        return [_stock(r) for r in await rows_by_key(self._conn, "stock", "sku", skus, lock=True)]

    async def _create_if_missing(self, sku: str) -> None:
        await self._conn.execute(
            "INSERT INTO stock (sku, available, reserved, shipped) VALUES ($1, 0, 0, 0)"
            " ON CONFLICT (sku) DO NOTHING",
            sku,
        )

    async def _write(self, added: Sequence[Stock], changed: Sequence[Stock]) -> None:
        stock = sorted([*added, *changed], key=lambda s: s.sku)
        await self._conn.execute(
            """
            INSERT INTO stock AS s (sku, available, reserved, shipped)
            SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
            ON CONFLICT (sku) DO UPDATE
            SET available = EXCLUDED.available, reserved = EXCLUDED.reserved,
                shipped = EXCLUDED.shipped, updated_at = now()
            """,
            [s.sku for s in stock],
            [s.available for s in stock],
            [s.reserved for s in stock],
            [s.shipped for s in stock],
        )

    async def get(self, sku: str) -> Stock | None:
        row = await self._conn.fetchrow("SELECT * FROM stock WHERE sku = $1", sku)
        return None if row is None else _stock(row)

    async def list(self, limit: int, after: str | None) -> list[Stock]:
        rows = await self._conn.fetch(
            "SELECT * FROM stock WHERE ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2",
            after,
            limit,
        )
        return [_stock(r) for r in rows]


class PostgresReservationRepository(ReservationRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _lock_all(self, order_ids: Sequence[UUID]) -> list[Reservation]:
        rows = await rows_by_key(self._conn, "reservations", "order_id", order_ids, lock=True)
        return [
            Reservation(
                r["order_id"],
                tuple(OrderLine.model_validate(i) for i in json.loads(r["items"])),
                ReservationStatus(r["status"]),
            )
            for r in rows
        ]

    async def _write(self, added: Sequence[Reservation], changed: Sequence[Reservation]) -> None:
        reservations = sorted([*added, *changed], key=lambda r: r.order_id)
        await self._conn.execute(
            """
            INSERT INTO reservations (order_id, items, status)
            SELECT r.order_id, r.items::jsonb, r.status
            FROM unnest($1::uuid[], $2::text[], $3::text[]) AS r(order_id, items, status)
            ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, updated_at = now()
            """,
            [r.order_id for r in reservations],
            [json.dumps([line.model_dump() for line in r.items]) for r in reservations],
            [r.status.value for r in reservations],
        )


class PostgresRestockLog(RestockLog):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def get(self, sku: str, idempotency_key: str) -> RecordedRestock | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM restocks WHERE sku = $1 AND idempotency_key = $2", sku, idempotency_key
        )
        if row is None:
            return None
        levels = StockLevels(row["sku"], row["available"], row["reserved"], row["shipped"])
        return RecordedRestock(row["idempotency_key"], row["quantity"], levels)

    async def add(self, restock: RecordedRestock) -> None:
        try:
            await self._conn.execute(
                """
                INSERT INTO restocks (sku, idempotency_key, quantity, available, reserved,
                                      shipped)
                VALUES ($1, $2, $3, $4, $5, $6)
                """,
                restock.sku,
                restock.idempotency_key,
                restock.quantity,
                restock.levels.available,
                restock.levels.reserved,
                restock.levels.shipped,
            )
        except asyncpg.UniqueViolationError as exc:
            raise DuplicateIdempotencyKeyError(
                f"{restock.sku}: Idempotency-Key {restock.idempotency_key!r}"
            ) from exc


class PostgresInventoryUnitOfWork(PostgresUnitOfWork, InventoryUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.stock = PostgresStockRepository(self, self.conn)
        self.reservations = PostgresReservationRepository(self, self.conn)
        self.restocks = PostgresRestockLog(self.conn)
