"""HTTP entrypoints of the inventory service: parse, build a command, run it, map errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from inventory.commands import (
    AddStock,
    IdempotencyConflictError,
    SetStock,
    add_stock,
    set_stock,
)
from inventory.domain.stock import MAX_STOCK_UNITS, StockOverflowError
from inventory.repository import DuplicateIdempotencyKeyError, InventoryUnitOfWork
from shared.service.http import ApiError, ErrorCode, unit_of_work, with_idempotency_key
from shared.service.text import Text

router = APIRouter(prefix="/inventory", tags=["inventory"])
UowDep = Annotated[InventoryUnitOfWork, Depends(unit_of_work)]
Sku = Annotated[Text, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]

# Set on the answer to a retry (the same Idempotency-Key and body): nothing was added now.
REPLAYED_HEADER = "Idempotent-Replayed"


def units_of_work(request: Request) -> Callable[[], InventoryUnitOfWork]:
    """FastAPI dependency: a factory of units of work, for a route that may need a second
    transaction (and that opens none before its body has been validated)."""
    new_uow: Callable[[], InventoryUnitOfWork] = request.app.state.runtime.new_http_uow
    return new_uow


NewUowDep = Annotated[Callable[[], InventoryUnitOfWork], Depends(units_of_work)]


class StockLevel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: int = Field(
        ge=0,
        le=MAX_STOCK_UNITS,
        description="quantity free to reserve; with what is reserved and shipped, at most"
        f" {MAX_STOCK_UNITS} units per SKU",
    )


class Restock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: units that a client adds up must be a JSON integer, not "5", 5.0 or true.
    quantity: int = Field(
        strict=True,
        gt=0,
        le=MAX_STOCK_UNITS,
        description="units to add to what is free to reserve, a JSON integer; the SKU's total"
        f" (available + reserved + shipped) stays at most {MAX_STOCK_UNITS}",
    )


class StockView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    available: int
    reserved: int
    shipped: int


class StockPage(BaseModel):
    items: list[StockView]
    next_after: str | None


@router.put(
    "/{sku}",
    response_model=StockView,
    summary="Set the stock of a SKU (an operator's absolute set)",
)
async def put_stock(sku: Sku, body: StockLevel, uow: UowDep) -> StockView:
    """Set `available`, the units free to reserve, to the given value, creating the SKU if
    it is new; reserved and shipped stock are kept. An operator's absolute set: it does not
    add, and a retry sets the same value again. The load suite and clients that add stock
    (deliveries) use `POST /inventory/{sku}/restock`. 422 if the SKU's total would exceed
    the most it can hold."""
    try:
        levels = await set_stock(SetStock(sku, body.available), uow)
    except StockOverflowError as exc:
        raise ApiError(ErrorCode.STOCK_LIMIT_EXCEEDED, str(exc)) from exc
    return StockView.model_validate(levels)


@router.post(
    "/{sku}/restock",
    response_model=StockView,
    summary="Add stock to a SKU (a delivery; idempotent with Idempotency-Key)",
    responses={
        200: {
            "headers": {
                REPLAYED_HEADER: {
                    "description": "`true` when this answers a retry (the same key and"
                    " quantity): nothing was added now; the levels are those right after"
                    " the first restock",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        },
        409: {"description": "the Idempotency-Key was used for this SKU with another quantity"},
        422: {"description": "a quantity that is not an integer > 0, or past the SKU's limit"},
    },
)
async def post_restock(
    sku: Sku,
    body: Restock,
    response: Response,
    new_uow: NewUowDep,
    idempotency_key: Annotated[
        Text | None,
        Header(
            min_length=1,
            max_length=200,
            description="names this restock of this SKU: the same key with the same quantity"
            " is a retry and adds nothing more; with another quantity it answers 409",
        ),
    ] = None,
) -> StockView:
    """Add `quantity` to `available`, creating the SKU if it is new (as `PUT` does). Answers
    200 with the SKU's levels right after this restock.

    With `Idempotency-Key` (scoped by SKU: the same key on another SKU is another restock),
    a retry with the same quantity adds nothing and answers the levels recorded right after
    the first restock, with the header `Idempotent-Replayed: true`; the same key with another
    quantity answers 409. The record and the stock change commit in one transaction. Without
    a key every request adds."""
    command = AddStock(sku, body.quantity, idempotency_key)
    # Restocks of one SKU queue on its stock row, so a retry waits for its first attempt and
    # then finds its record (it always looks first: it reads the row anyway); should two ever
    # race past that, the helper runs the loser again.
    try:
        restocked = await with_idempotency_key(
            new_uow,
            lambda uow, _look_first: add_stock(command, uow),
            lost_race=DuplicateIdempotencyKeyError,
            conflict=IdempotencyConflictError,
        )
    except StockOverflowError as exc:
        raise ApiError(ErrorCode.STOCK_LIMIT_EXCEEDED, str(exc)) from exc
    if restocked.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return StockView.model_validate(restocked.levels)


@router.get("/{sku}", response_model=StockView)
async def get_stock(sku: Sku, uow: UowDep) -> StockView:
    stock = await uow.stock.get(sku)
    if stock is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no SKU {sku}")
    return StockView.model_validate(stock)


@router.get("", response_model=StockPage)
async def list_stock(
    uow: UowDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[Text | None, Query(max_length=64)] = None,
) -> StockPage:
    stock = await uow.stock.list(limit, after)
    next_after = stock[-1].sku if len(stock) == limit else None
    return StockPage(items=[StockView.model_validate(s) for s in stock], next_after=next_after)
