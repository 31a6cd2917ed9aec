"""Stock and reservations behind ports, with Postgres and in-memory implementations.

An aggregate that recorded events changed; the unit of work saves exactly those."""

from __future__ import annotations

import json
from abc import abstractmethod
from uuid import UUID

import asyncpg

from inventory.domain.stock import Reservation, ReservationStatus, Stock
from shared.contracts.catalog import OrderLine
from shared.repository import TrackingRepository
from shared.uow import InMemoryUnitOfWork, PostgresUnitOfWork, UnitOfWork


class StockRepository(TrackingRepository[Stock]):
    async def lock(self, skus: list[str]) -> dict[str, Stock]:
        """The stock rows of these SKUs, locked until commit (in SKU order, so two
        reservations never deadlock). Unknown SKUs are absent from the result."""
        found = await self._lock(sorted(set(skus)))
        return {s.sku: self.track(s) for s in found}

    async def get_or_create(self, sku: str) -> Stock:
        """The SKU's stock, locked; created empty first if missing, so that two requests
        creating the same SKU at once queue on its row instead of overwriting each other."""
        await self._create_if_missing(sku)
        return (await self.lock([sku]))[sku]

    @abstractmethod
    async def _lock(self, skus: list[str]) -> list[Stock]: ...

    @abstractmethod
    async def _create_if_missing(self, sku: str) -> None: ...

    @abstractmethod
    async def get(self, sku: str) -> Stock | None:
        """Read only: not tracked, not locked."""

    @abstractmethod
    async def list(self, limit: int, after: str | None) -> list[Stock]: ...


class ReservationRepository(TrackingRepository[Reservation]):
    async def get(self, order_id: UUID) -> Reservation | None:
        reservation = await self._get(order_id)
        return None if reservation is None else self.track(reservation)

    @abstractmethod
    async def _get(self, order_id: UUID) -> Reservation | None: ...


class InventoryUnitOfWork(UnitOfWork):
    stock: StockRepository
    reservations: ReservationRepository

    async def _persist(self) -> None:
        await self.stock.persist()
        await self.reservations.persist()


# --- PostgreSQL ------------------------------------------------------------------------


def _stock(row: asyncpg.Record) -> Stock:
    return Stock(row["sku"], row["available"], row["reserved"], row["shipped"])


class PostgresStockRepository(StockRepository):
    def __init__(self, uow: UnitOfWork, conn: asyncpg.Connection) -> None:
        super().__init__(uow)
        self._conn = conn

    async def _lock(self, skus: list[str]) -> list[Stock]:
        rows = await self._conn.fetch(
            "SELECT * FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE", skus
        )
        return [_stock(r) for r in rows]

    async def _create_if_missing(self, sku: str) -> None:
        await self._conn.execute(
            "INSERT INTO stock (sku, available, reserved, shipped) VALUES ($1, 0, 0, 0)"
            " ON CONFLICT (sku) DO NOTHING",
            sku,
        )

    async def _save(self, stock: Stock) -> None:
        await self._conn.execute(
            """
            INSERT INTO stock (sku, available, reserved, shipped) VALUES ($1, $2, $3, $4)
            ON CONFLICT (sku) DO UPDATE
            SET available = $2, reserved = $3, shipped = $4, updated_at = now()
            """,
            stock.sku,
            stock.available,
            stock.reserved,
            stock.shipped,
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

    async def _get(self, order_id: UUID) -> Reservation | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM reservations WHERE order_id = $1 FOR UPDATE", order_id
        )
        if row is None:
            return None
        items = tuple(OrderLine.model_validate(i) for i in json.loads(row["items"]))
        return Reservation(row["order_id"], items, ReservationStatus(row["status"]))

    async def _save(self, reservation: Reservation) -> None:
        await self._conn.execute(
            """
            INSERT INTO reservations (order_id, items, status) VALUES ($1, $2, $3)
            ON CONFLICT (order_id) DO UPDATE SET status = $3, updated_at = now()
            """,
            reservation.order_id,
            json.dumps([line.model_dump() for line in reservation.items]),
            reservation.status.value,
        )


class PostgresInventoryUnitOfWork(PostgresUnitOfWork, InventoryUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.stock = PostgresStockRepository(self, self.conn)
        self.reservations = PostgresReservationRepository(self, self.conn)


# --- In memory (unit tests) ------------------------------------------------------------


def _copy_stock(s: Stock) -> Stock:
    return Stock(s.sku, s.available, s.reserved, s.shipped)


class InMemoryStockRepository(StockRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[str, Stock] = uow.table("stock")

    async def _lock(self, skus: list[str]) -> list[Stock]:
        return [_copy_stock(self._rows[s]) for s in skus if s in self._rows]

    async def _create_if_missing(self, sku: str) -> None:
        self._rows.setdefault(sku, Stock(sku))

    async def _save(self, stock: Stock) -> None:
        self._rows[stock.sku] = _copy_stock(stock)

    async def get(self, sku: str) -> Stock | None:
        found = self._rows.get(sku)
        return None if found is None else _copy_stock(found)

    async def list(self, limit: int, after: str | None) -> list[Stock]:
        skus = sorted(s for s in self._rows if after is None or s > after)[:limit]
        return [_copy_stock(self._rows[s]) for s in skus]


class InMemoryReservationRepository(ReservationRepository):
    def __init__(self, uow: InMemoryUnitOfWork) -> None:
        super().__init__(uow)
        self._rows: dict[UUID, Reservation] = uow.table("reservations")

    async def _get(self, order_id: UUID) -> Reservation | None:
        found = self._rows.get(order_id)
        return None if found is None else Reservation(found.order_id, found.items, found.status)

    async def _save(self, reservation: Reservation) -> None:
        r = reservation
        self._rows[r.order_id] = Reservation(r.order_id, r.items, r.status)


class FakeInventoryUnitOfWork(InMemoryUnitOfWork, InventoryUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.stock = InMemoryStockRepository(self)
        self.reservations = InMemoryReservationRepository(self)
