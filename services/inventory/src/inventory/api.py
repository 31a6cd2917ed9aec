"""HTTP entrypoints of the inventory service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from inventory.domain.stock import MAX_STOCK_UNITS, StockOverflowError
from inventory.repository import InventoryUnitOfWork
from shared.http import unit_of_work
from shared.text import Text

router = APIRouter(prefix="/inventory", tags=["inventory"])
UowDep = Annotated[InventoryUnitOfWork, Depends(unit_of_work)]
Sku = Annotated[Text, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]


class Restock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    available: int = Field(
        ge=0,
        le=MAX_STOCK_UNITS,
        description="quantity free to reserve; with what is reserved and shipped, at most"
        f" {MAX_STOCK_UNITS} units per SKU",
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


@router.put("/{sku}", response_model=StockView)
async def put_stock(sku: Sku, body: Restock, uow: UowDep) -> StockView:
    """Set the available quantity of a SKU (creating it); reserved stock is kept."""
    stock = await uow.stock.get_or_create(sku)
    try:
        stock.restock(body.available)
    except StockOverflowError as exc:
        raise HTTPException(422, str(exc)) from exc
    view = StockView.model_validate(stock)
    await uow.commit()
    return view


@router.get("/{sku}", response_model=StockView)
async def get_stock(sku: Sku, uow: UowDep) -> StockView:
    stock = await uow.stock.get(sku)
    if stock is None:
        raise HTTPException(404, f"no SKU {sku}")
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
