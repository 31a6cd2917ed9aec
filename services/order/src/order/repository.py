"""The order service's persistence ports: orders, the SKU catalog replica, and its unit of
work. The PostgreSQL adapters are in :mod:`order.postgres`, the in-memory fakes for unit
tests in :mod:`order.testing`; the contract tests run the same cases against both."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from order.domain.order import Order, OrderStatus
from shared.observability.metrics import AGGREGATE_AGE_SECONDS
from shared.writing.repository import TrackingRepository
from shared.writing.uow import UnitOfWork


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    request_hash: str


class DuplicateIdempotencyKeyError(Exception):
    """Another transaction stored an order with this Idempotency-Key first (two requests
    raced with one key): retry, and the retry finds that order."""


class OrderRepository(TrackingRepository[UUID, Order]):
    """``get`` and ``load_all`` lock orders until commit; the unit of work inserts added
    orders and saves changed ones at commit, with an optimistic version check."""

    def __init__(self, uow: UnitOfWork) -> None:
        super().__init__(uow)
        self._loaded_versions: dict[UUID, int] = {}
        self._idempotency: dict[UUID, IdempotencyRecord] = {}

    def track(self, order: Order) -> Order:
        self._loaded_versions[order.order_id] = order.version  # what the save checks
        return super().track(order)

    async def read(self, order_id: UUID) -> Order | None:
        """For display: neither locked nor tracked (changes to it are not saved)."""
        found = await self._get_all([order_id], lock=False)
        return found[0] if found else None

    def add(self, order: Order, idempotency: IdempotencyRecord | None = None) -> Order:
        if idempotency is not None:
            self._idempotency[order.order_id] = idempotency
        return super().add(order)

    async def _write(self, added: Sequence[Order], changed: Sequence[Order]) -> None:
        for order in added:  # one at a time: a request places one order
            await self._insert_order(order, self._idempotency.get(order.order_id))
        if changed:
            await self._update_all([(o, self._loaded_versions[o.order_id]) for o in changed])
        for order in changed:
            self._loaded_versions[order.order_id] = order.version
            AGGREGATE_AGE_SECONDS.labels("order", "order", order.status.value).observe(
                (order.updated_at - order.created_at).total_seconds()
            )

    async def _lock_all(self, order_ids: Sequence[UUID]) -> list[Order]:
        return await self._get_all(order_ids, lock=True)

    @abstractmethod
    async def _get_all(self, order_ids: Sequence[UUID], *, lock: bool) -> list[Order]:
        """The orders found, by id (locked in that order with ``lock``)."""

    @abstractmethod
    async def _insert_order(self, order: Order, idempotency: IdempotencyRecord | None) -> None:
        """Raises DuplicateIdempotencyKeyError when the key is taken."""

    @abstractmethod
    async def _update_all(self, changes: Sequence[tuple[Order, int]]) -> None:
        """Save each order whose stored version is the one given; raises ConcurrencyError
        (saving none) when any is not."""

    @abstractmethod
    async def by_idempotency_key(self, key: str) -> tuple[Order, str] | None:
        """The order placed with this key and the hash of the request that placed it."""

    @abstractmethod
    async def list(
        self, status: OrderStatus | None, limit: int, after: UUID | None
    ) -> list[Order]: ...


class Catalog(ABC):
    """The SKUs inventory has announced on the ``stock`` topic, with the stock it last said
    is free (a local read model). Orders are not checked against it: it learns of a SKU a
    moment after inventory has it, and inventory decides every reservation."""

    @abstractmethod
    async def available(self, sku: str) -> int | None:
        """The stock free to reserve as inventory last announced it; None before it has."""

    @abstractmethod
    async def update(self, sku: str, available: int) -> None: ...


class OrderUnitOfWork(UnitOfWork):
    """The order service's unit of work: its repositories plus outbox and inbox."""

    orders: OrderRepository
    catalog: Catalog

    async def _persist(self) -> None:
        await self.orders.persist()
