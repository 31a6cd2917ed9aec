"""In-memory fakes of the order service's ports, for unit tests (never imported by the
service itself). The contract tests hold them to the PostgreSQL adapters' behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from order.domain.order import Order, OrderStatus
from order.repository import (
    Catalog,
    DuplicateIdempotencyKeyError,
    IdempotencyRecord,
    OrderRepository,
    OrderUnitOfWork,
)
from shared.testing.fakes import InMemoryUnitOfWork, stored_copy
from shared.writing.aggregate import ConcurrencyError


@dataclass
class _StoredOrder:
    order: Order
    idempotency: IdempotencyRecord | None


class InMemoryOrderRepository(OrderRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, _StoredOrder] = uow.table("orders")

    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Order]:
        found = [self._rows[i] for i in sorted(order_ids) if i in self._rows]
        return [stored_copy(stored.order) for stored in found]

    async def _insert_order(self, order: Order, idempotency: IdempotencyRecord | None) -> None:
        if order.order_id in self._rows:
            raise ValueError(f"duplicate order {order.order_id}")
        if idempotency and any(
            s.idempotency and s.idempotency.key == idempotency.key for s in self._rows.values()
        ):
            raise DuplicateIdempotencyKeyError(idempotency.key)
        self._rows[order.order_id] = _StoredOrder(stored_copy(order), idempotency)

    async def _update_all(self, changes: Sequence[tuple[Order, int]]) -> None:
        if any(self._rows[o.order_id].order.version != v for o, v in changes):
            raise ConcurrencyError(f"{len(changes)} orders, some changed concurrently")
        for order, _ in changes:
            self._rows[order.order_id].order = stored_copy(order)

    async def by_idempotency_key(self, key: str) -> tuple[Order, str] | None:
        for stored in self._rows.values():
            if stored.idempotency and stored.idempotency.key == key:
                return stored_copy(stored.order), stored.idempotency.request_hash
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
        return [stored_copy(o) for o in orders[:limit]]


class InMemoryCatalog(Catalog):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        self._rows: dict[str, int] = uow.table("known_skus")

    async def available(self, sku: str) -> int | None:
        return self._rows.get(sku)

    async def update(self, sku: str, available: int) -> None:
        self._rows[sku] = available


class FakeOrderUnitOfWork(InMemoryUnitOfWork, OrderUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.orders = InMemoryOrderRepository(self)
        self.catalog = InMemoryCatalog(self)
