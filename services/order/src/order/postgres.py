"""The order service's PostgreSQL adapters: orders and the SKU catalog replica."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID

import asyncpg

from order.domain.order import Order, OrderStatus
from order.repository import (
    Catalog,
    DuplicateIdempotencyKeyError,
    IdempotencyRecord,
    OrderRepository,
    OrderUnitOfWork,
)
from shared.contracts.catalog import Address, OrderLine
from shared.persistence.postgres import PostgresUnitOfWork, rows_by_key
from shared.writing.aggregate import ConcurrencyError
from shared.writing.uow import UnitOfWork


def _order_from_row(row: asyncpg.Record) -> Order:
    return Order(
        row["order_id"],
        row["customer_id"],
        tuple(OrderLine.model_validate(i) for i in json.loads(row["items"])),
        Address.model_validate_json(row["shipping_address"]),
        status=OrderStatus(row["status"]),
        version=row["version"],
        correlation_id=row["correlation_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# An order saved with its version check: one alone, or several from arrays in one statement
# (see shared.persistence.postgres.rows_by_key for why one is not sent as arrays of one).
_UPDATE_ONE = """
    UPDATE orders SET status = $2, shipping_address = $3::jsonb, version = $4, updated_at = $5
    WHERE order_id = $1 AND version = $6
"""
_UPDATE_MANY = """
    UPDATE orders AS o
    SET status = c.status, shipping_address = c.shipping_address::jsonb,
        version = c.version, updated_at = c.updated_at
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::int[])
         AS c(order_id, status, shipping_address, version, updated_at, expected_version)
    WHERE o.order_id = c.order_id AND o.version = c.expected_version
"""


class PostgresOrderRepository(OrderRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Order]:
        rows = await rows_by_key(self._conn, "orders", "order_id", order_ids, lock=lock)
        return [_order_from_row(r) for r in rows]

    async def _insert_order(self, order: Order, idempotency: IdempotencyRecord | None) -> None:
        try:
            await self._conn.execute(
                """
                INSERT INTO orders (order_id, customer_id, status, items, shipping_address,
                                    version, correlation_id, idempotency_key, request_hash,
                                    created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                """,
                order.order_id,
                order.customer_id,
                order.status.value,
                json.dumps([line.model_dump() for line in order.items]),
                order.shipping_address.model_dump_json(),
                order.version,
                order.correlation_id,
                idempotency.key if idempotency else None,
                idempotency.request_hash if idempotency else None,
                order.created_at,
                order.updated_at,
            )
        except asyncpg.UniqueViolationError as exc:
            if idempotency is None or "idempotency_key" not in (exc.constraint_name or ""):
                raise
            raise DuplicateIdempotencyKeyError(idempotency.key) from exc

    async def _update_all(self, changes: Sequence[tuple[Order, int]]) -> None:
        orders = [order for order, _ in changes]
        columns = (
            [o.order_id for o in orders],
            [o.status.value for o in orders],
            [o.shipping_address.model_dump_json() for o in orders],
            [o.version for o in orders],
            [o.updated_at for o in orders],
            [expected for _, expected in changes],
        )
        if len(changes) == 1:  # planned once, where the arrays' form is planned every time
            result = await self._conn.execute(_UPDATE_ONE, *(c[0] for c in columns))
        else:
            result = await self._conn.execute(_UPDATE_MANY, *columns)
        if result != f"UPDATE {len(changes)}":
            raise ConcurrencyError(f"{len(changes)} orders, some changed concurrently")

    async def by_idempotency_key(self, key: str) -> tuple[Order, str] | None:
        row = await self._conn.fetchrow("SELECT * FROM orders WHERE idempotency_key = $1", key)
        return None if row is None else (_order_from_row(row), row["request_hash"])

    async def list(self, status: OrderStatus | None, limit: int, after: UUID | None) -> list[Order]:
        rows = await self._conn.fetch(
            """
            SELECT * FROM orders
            WHERE ($1::text IS NULL OR status = $1)
              AND ($2::uuid IS NULL OR (created_at, order_id) >
                   (SELECT created_at, order_id FROM orders WHERE order_id = $2))
            ORDER BY created_at, order_id
            LIMIT $3
            """,
            status.value if status else None,
            after,
            limit,
        )
        return [_order_from_row(r) for r in rows]


class PostgresCatalog(Catalog):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def available(self, sku: str) -> int | None:
        available: int | None = await self._conn.fetchval(
            "SELECT available FROM known_skus WHERE sku = $1", sku
        )
        return available

    async def update(self, sku: str, available: int) -> None:
        await self._conn.execute(
            """
            INSERT INTO known_skus (sku, available) VALUES ($1, $2)
            ON CONFLICT (sku) DO UPDATE SET available = $2, updated_at = now()
            """,
            sku,
            available,
        )


class PostgresOrderUnitOfWork(PostgresUnitOfWork, OrderUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.orders = PostgresOrderRepository(self, self.conn)
        self.catalog = PostgresCatalog(self.conn)
