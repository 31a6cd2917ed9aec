"""Persistence of orders and of the SKU catalog replica, behind ports with a Postgres and an
in-memory implementation (the same contract tests run against both)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from order.domain.order import Order, OrderStatus
from shared.contracts.catalog import Address, OrderLine
from shared.metrics import AGGREGATE_AGE_SECONDS
from shared.uow import InMemoryUnitOfWork, PostgresUnitOfWork, UnitOfWork


class ConcurrencyError(Exception):
    """The order changed under us (its version moved): the transaction must be retried."""


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    request_hash: str


class OrderRepository(ABC):
    """``get`` locks the order until commit; changed orders are saved by the unit of work
    with an optimistic version check."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._loaded_versions: dict[UUID, int] = {}
        self._tracked: dict[UUID, Order] = {}

    async def get(self, order_id: UUID) -> Order | None:
        order = await self._get(order_id, lock=True)
        if order is not None:
            self._track(order, order.version)
        return order

    async def read(self, order_id: UUID) -> Order | None:
        """For display: neither locked nor tracked (changes to it are not saved)."""
        return await self._get(order_id, lock=False)

    async def add(self, order: Order, idempotency: IdempotencyRecord | None = None) -> None:
        await self._insert(order, idempotency)
        self._track(order, order.version)

    async def persist(self) -> None:
        for order_id, order in self._tracked.items():
            loaded = self._loaded_versions[order_id]
            if order.version != loaded:
                await self._update(order, loaded)
                self._loaded_versions[order_id] = order.version
                AGGREGATE_AGE_SECONDS.labels("order", "order", order.status.value).observe(
                    (order.updated_at - order.created_at).total_seconds()
                )

    def _track(self, order: Order, version: int) -> None:
        self._tracked[order.order_id] = order
        self._loaded_versions[order.order_id] = version
        self._uow.track(order)

    @abstractmethod
    async def _get(self, order_id: UUID, *, lock: bool) -> Order | None: ...

    @abstractmethod
    async def _insert(self, order: Order, idempotency: IdempotencyRecord | None) -> None: ...

    @abstractmethod
    async def _update(self, order: Order, expected_version: int) -> None: ...

    @abstractmethod
    async def by_idempotency_key(self, key: str) -> tuple[Order, str] | None:
        """The order placed with this key and the hash of the request that placed it."""

    @abstractmethod
    async def list(
        self, status: OrderStatus | None, limit: int, after: UUID | None
    ) -> list[Order]: ...


class Catalog(ABC):
    """The SKUs inventory has announced on the ``stock`` topic (a local read model)."""

    @abstractmethod
    async def unknown(self, skus: list[str]) -> list[str]: ...

    @abstractmethod
    async def update(self, sku: str, available: int) -> None: ...


class OrderUnitOfWork(UnitOfWork):
    """The order service's unit of work: its repositories plus outbox and inbox."""

    orders: OrderRepository
    catalog: Catalog

    async def _persist(self) -> None:
        await self.orders.persist()


# --- PostgreSQL ------------------------------------------------------------------------


def _order_from_row(row: asyncpg.Record | dict[str, Any]) -> Order:
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


def _items_json(order: Order) -> str:
    return json.dumps([line.model_dump() for line in order.items])


class PostgresOrderRepository(OrderRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _get(self, order_id: UUID, *, lock: bool) -> Order | None:
        query = "SELECT * FROM orders WHERE order_id = $1" + (" FOR UPDATE" if lock else "")
        row = await self._conn.fetchrow(query, order_id)
        return None if row is None else _order_from_row(row)

    async def _insert(self, order: Order, idempotency: IdempotencyRecord | None) -> None:
        await self._conn.execute(
            """
            INSERT INTO orders (order_id, customer_id, status, items, shipping_address, version,
                                correlation_id, idempotency_key, request_hash, created_at,
                                updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            order.order_id,
            order.customer_id,
            order.status.value,
            _items_json(order),
            order.shipping_address.model_dump_json(),
            order.version,
            order.correlation_id,
            idempotency.key if idempotency else None,
            idempotency.request_hash if idempotency else None,
            order.created_at,
            order.updated_at,
        )

    async def _update(self, order: Order, expected_version: int) -> None:
        result = await self._conn.execute(
            """
            UPDATE orders SET status = $2, shipping_address = $3, version = $4, updated_at = $5
            WHERE order_id = $1 AND version = $6
            """,
            order.order_id,
            order.status.value,
            order.shipping_address.model_dump_json(),
            order.version,
            order.updated_at,
            expected_version,
        )
        if result != "UPDATE 1":
            raise ConcurrencyError(f"order {order.order_id} changed concurrently")

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

    async def unknown(self, skus: list[str]) -> list[str]:
        known = await self._conn.fetch("SELECT sku FROM known_skus WHERE sku = ANY($1)", skus)
        found = {r["sku"] for r in known}
        return [sku for sku in skus if sku not in found]

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


# --- In memory (unit tests) ------------------------------------------------------------


@dataclass
class _StoredOrder:
    order: Order
    idempotency: IdempotencyRecord | None


class InMemoryOrderRepository(OrderRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, _StoredOrder] = uow.table("orders")

    async def _get(self, order_id: UUID, *, lock: bool) -> Order | None:
        stored = self._rows.get(order_id)
        return None if stored is None else _copy(stored.order)

    async def _insert(self, order: Order, idempotency: IdempotencyRecord | None) -> None:
        if order.order_id in self._rows:
            raise ValueError(f"duplicate order {order.order_id}")
        if idempotency and any(
            s.idempotency and s.idempotency.key == idempotency.key for s in self._rows.values()
        ):
            raise asyncpg.UniqueViolationError("idempotency_key")
        self._rows[order.order_id] = _StoredOrder(_copy(order), idempotency)

    async def _update(self, order: Order, expected_version: int) -> None:
        stored = self._rows[order.order_id]
        if stored.order.version != expected_version:
            raise ConcurrencyError(f"order {order.order_id} changed concurrently")
        stored.order = _copy(order)

    async def by_idempotency_key(self, key: str) -> tuple[Order, str] | None:
        for stored in self._rows.values():
            if stored.idempotency and stored.idempotency.key == key:
                return _copy(stored.order), stored.idempotency.request_hash
        return None

    async def list(self, status: OrderStatus | None, limit: int, after: UUID | None) -> list[Order]:
        orders = sorted(
            (s.order for s in self._rows.values()), key=lambda o: (o.created_at, str(o.order_id))
        )
        if status is not None:
            orders = [o for o in orders if o.status is status]
        if after is not None and after in self._rows:
            cursor = self._rows[after].order
            key = (cursor.created_at, str(cursor.order_id))
            orders = [o for o in orders if (o.created_at, str(o.order_id)) > key]
        return [_copy(o) for o in orders[:limit]]


class InMemoryCatalog(Catalog):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        self._rows: dict[str, int] = uow.table("known_skus")

    async def unknown(self, skus: list[str]) -> list[str]:
        return [sku for sku in skus if sku not in self._rows]

    async def update(self, sku: str, available: int) -> None:
        self._rows[sku] = available


class FakeOrderUnitOfWork(InMemoryUnitOfWork, OrderUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.orders = InMemoryOrderRepository(self)
        self.catalog = InMemoryCatalog(self)


def _copy(order: Order) -> Order:
    return Order(
        order.order_id,
        order.customer_id,
        order.items,
        order.shipping_address,
        status=order.status,
        version=order.version,
        correlation_id=order.correlation_id,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
