"""In-memory fakes of the inventory service's ports, for unit tests (never imported by the
service itself). The contract tests hold them to the PostgreSQL adapters' behaviour."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from inventory.domain.stock import Reservation, Stock
from inventory.repository import (
    DuplicateIdempotencyKeyError,
    InventoryUnitOfWork,
    RecordedRestock,
    ReservationRepository,
    RestockLog,
    StockRepository,
)
from shared.testing.fakes import InMemoryUnitOfWork, stored_copy


class InMemoryStockRepository(StockRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[str, Stock] = uow.table("stock")

    async def _lock_all(self, skus: Sequence[str]) -> list[Stock]:
        return [stored_copy(self._rows[s]) for s in skus if s in self._rows]

    async def _create_if_missing(self, sku: str) -> None:
        self._rows.setdefault(sku, Stock(sku))

    async def _write(self, added: Sequence[Stock], changed: Sequence[Stock]) -> None:
        for stock in [*added, *changed]:
            self._rows[stock.sku] = stored_copy(stock)

    async def get(self, sku: str) -> Stock | None:
        found = self._rows.get(sku)
        return None if found is None else stored_copy(found)

    async def list(self, limit: int, after: str | None) -> list[Stock]:
        skus = sorted(s for s in self._rows if after is None or s > after)[:limit]
        return [stored_copy(self._rows[s]) for s in skus]


class InMemoryReservationRepository(ReservationRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, Reservation] = uow.table("reservations")

    async def _lock_all(self, order_ids: Sequence[UUID]) -> list[Reservation]:
        return [stored_copy(self._rows[o]) for o in order_ids if o in self._rows]

    async def _write(self, added: Sequence[Reservation], changed: Sequence[Reservation]) -> None:
        for reservation in [*added, *changed]:
            self._rows[reservation.order_id] = stored_copy(reservation)


class InMemoryRestockLog(RestockLog):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        self._rows: dict[tuple[str, str], RecordedRestock] = uow.table("restocks")
        self._stock: dict[str, Stock] = uow.table("stock")

    async def get(self, sku: str, idempotency_key: str) -> RecordedRestock | None:
        return self._rows.get((sku, idempotency_key))

    async def add(self, restock: RecordedRestock) -> None:
        if restock.sku not in self._stock:  # the foreign key
            raise ValueError(f"restock of unknown SKU {restock.sku}")
        if restock.quantity <= 0:  # the CHECK constraint
            raise ValueError(f"restock of {restock.quantity} units")
        key = (restock.sku, restock.idempotency_key)
        if key in self._rows:
            raise DuplicateIdempotencyKeyError(
                f"{restock.sku}: Idempotency-Key {restock.idempotency_key!r}"
            )
        self._rows[key] = restock  # frozen: no copy needed


class FakeInventoryUnitOfWork(InMemoryUnitOfWork, InventoryUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.stock = InMemoryStockRepository(self)
        self.reservations = InMemoryReservationRepository(self)
        self.restocks = InMemoryRestockLog(self)
