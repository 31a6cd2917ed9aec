"""What a client can ask of the inventory service beyond reading, and how it is carried out."""

from __future__ import annotations

from dataclasses import dataclass

from inventory.domain.stock import StockLevels
from inventory.repository import InventoryUnitOfWork, RecordedRestock
from shared.writing.aggregate import DomainError


class IdempotencyConflictError(DomainError):
    pass


@dataclass(frozen=True)
class SetStock:
    """An operator's absolute set of the units free to reserve."""

    sku: str
    available: int


@dataclass(frozen=True)
class AddStock:
    """A delivery: ``quantity`` more units of ``sku``. With an idempotency key, a retry of
    the same restock adds nothing more."""

    sku: str
    quantity: int
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Restocked:
    """The SKU's levels right after the restock; ``replayed`` when this was a retry of a
    restock made earlier with the same key (which added nothing now)."""

    levels: StockLevels
    replayed: bool = False


async def set_stock(command: SetStock, uow: InventoryUnitOfWork) -> StockLevels:
    """Set ``available`` (creating the SKU); reserved and shipped stock are kept."""
    stock = await uow.stock.get_or_create(command.sku)
    stock.restock(command.available)
    levels = StockLevels.of(stock)
    await uow.commit()
    return levels


async def add_stock(command: AddStock, uow: InventoryUnitOfWork) -> Restocked:
    """Add ``quantity`` to ``available`` (creating the SKU, as a set does), through the same
    domain change as a set, so the stock events are the same. A key is scoped by its SKU: the
    same key and quantity again answer the levels recorded by the first restock, another
    quantity conflicts. The record and the stock change commit in one transaction."""
    # The SKU's row is locked first: a retry racing with its first attempt waits here for
    # that transaction, and then reads its record.
    stock = await uow.stock.get_or_create(command.sku)
    key = command.idempotency_key
    if key is not None:
        earlier = await uow.restocks.get(command.sku, key)
        if earlier is not None:
            if earlier.quantity != command.quantity:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {key!r} was used for a restock of {earlier.quantity}"
                    f" units of {command.sku}, not {command.quantity}"
                )
            return Restocked(earlier.levels, replayed=True)
    stock.add(command.quantity)
    levels = StockLevels.of(stock)
    if key is not None:
        await uow.restocks.add(RecordedRestock(key, command.quantity, levels))
    await uow.commit()
    return Restocked(levels)
