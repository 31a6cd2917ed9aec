"""The inventory service's persistence ports: stock, reservations and the restocks made with
an Idempotency-Key, and its unit of work.
The PostgreSQL adapters are in :mod:`inventory.postgres`, the in-memory fakes for unit tests
in :mod:`inventory.testing`; the contract tests run the same cases against both.

An aggregate that recorded events changed; the unit of work saves exactly those."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from inventory.domain.stock import Reservation, Stock, StockLevels
from shared.writing.repository import TrackingRepository
from shared.writing.uow import UnitOfWork


class StockRepository(TrackingRepository[str, Stock]):
    async def lock(self, skus: Iterable[str]) -> dict[str, Stock]:
        """The stock of these SKUs, locked until commit (``load_all``: in SKU order, so two
        reservations never deadlock). Unknown SKUs are absent from the result."""
        return {s.sku: s for s in await self.load_all(skus)}

    async def get_or_create(self, sku: str) -> Stock:
        """The SKU's stock, locked; created empty first if missing, so that two requests
        creating the same SKU at once queue on its row instead of overwriting each other."""
        await self._create_if_missing(sku)
        self._absent.discard(sku)  # if it was looked for before in this transaction
        return (await self.lock([sku]))[sku]

    @abstractmethod
    async def _create_if_missing(self, sku: str) -> None: ...

    @abstractmethod
    async def get(self, sku: str) -> Stock | None:
        """Read only: not tracked, not locked."""

    @abstractmethod
    async def list(self, limit: int, after: str | None) -> list[Stock]: ...


class ReservationRepository(TrackingRepository[UUID, Reservation]):
    """A reservation per order, locked by ``get`` and ``load_all`` until commit."""


@dataclass(frozen=True)
class RecordedRestock:
    """A restock made with an Idempotency-Key: what it asked for and the SKU's levels right
    after it, which is what a retry with the same key answers."""

    idempotency_key: str
    quantity: int
    levels: StockLevels

    @property
    def sku(self) -> str:
        return self.levels.sku


class DuplicateIdempotencyKeyError(Exception):
    """Another transaction recorded a restock of this SKU with this Idempotency-Key first
    (two requests raced with one key): retry, and the retry finds that restock."""


class RestockLog(ABC):
    """The restocks made with an Idempotency-Key, at most one per (SKU, key): a key is
    scoped by its SKU. A restock is recorded in the transaction of its stock change, so the
    two commit together or not at all. Records are kept (no purge)."""

    @abstractmethod
    async def get(self, sku: str, idempotency_key: str) -> RecordedRestock | None:
        """The restock of ``sku`` recorded with this key, if any (read only, not locked:
        callers hold the SKU's stock row, which serialises restocks of one SKU)."""

    @abstractmethod
    async def add(self, restock: RecordedRestock) -> None:
        """Record ``restock`` in the current transaction; raises
        :class:`DuplicateIdempotencyKeyError` when its SKU already has one with its key."""


class InventoryUnitOfWork(UnitOfWork):
    stock: StockRepository
    reservations: ReservationRepository
    restocks: RestockLog

    async def _persist(self) -> None:
        await self.stock.persist()
        await self.reservations.persist()
