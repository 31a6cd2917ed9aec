"""HTTP entrypoints of the order service: parse, build a command, run it, map errors."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from order.commands import (
    IdempotencyConflictError,
    PlaceOrder,
    cancel_order,
    change_shipping_address,
    place_order,
)
from order.domain.order import OrderStatus
from order.repository import DuplicateIdempotencyKeyError, OrderUnitOfWork
from shared.contracts.catalog import Address, OrderLine
from shared.service.http import ApiError, ErrorCode, unit_of_work, with_idempotency_key
from shared.service.text import Text
from shared.writing.storm import ChangeRateGuard

MAX_LINES = 50
# The SKUs inventory can hold (its `PUT /inventory/{sku}` takes no other): an order for any
# other SKU could never be filled, so it is refused here instead of rejected later.
SKU_PATTERN = r"^[A-Za-z0-9._\-]+$"

router = APIRouter(prefix="/orders", tags=["orders"])
UowDep = Annotated[OrderUnitOfWork, Depends(unit_of_work)]


def address_change_guard(request: Request) -> ChangeRateGuard:
    """The storm guard of address changes that bootstrap built for this process."""
    guard: ChangeRateGuard = request.app.state.runtime.definition.address_changes
    return guard


AddressGuardDep = Annotated[ChangeRateGuard, Depends(address_change_guard)]


class OrderLineRequest(OrderLine):
    sku: Text = Field(
        min_length=1,
        max_length=64,
        pattern=SKU_PATTERN,
        description="The stock-keeping unit, 1 to 64 of `A-Z a-z 0-9 . _ -`. One this service"
        " has not heard of is accepted: inventory decides, and the order ends REJECTED if"
        " inventory does not hold it.",
    )


class PlaceOrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Text = Field(min_length=1, max_length=100)
    items: list[OrderLineRequest] = Field(min_length=1, max_length=MAX_LINES)
    shipping_address: Address

    @field_validator("items")
    @classmethod
    def each_sku_on_one_line(cls, items: list[OrderLineRequest]) -> list[OrderLineRequest]:
        skus = [line.sku for line in items]
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear on one line only")
        return items


class OrderAccepted(BaseModel):
    order_id: UUID
    status: OrderStatus
    correlation_id: str


class OrderView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    order_id: UUID
    customer_id: str
    status: OrderStatus
    items: list[OrderLine]
    shipping_address: Address
    version: int
    correlation_id: str
    created_at: datetime
    updated_at: datetime


class OrderPage(BaseModel):
    items: list[OrderView]
    next_after: UUID | None = Field(description="pass as `after` to get the next page")


@router.post(
    "",
    status_code=202,
    response_model=OrderAccepted,
    responses={409: {"description": "the Idempotency-Key was used with another body"}},
)
async def post_order(
    body: PlaceOrderRequest,
    request: Request,
    idempotency_key: Annotated[Text | None, Header(max_length=200)] = None,
) -> OrderAccepted:
    """Place an order. It is PENDING until inventory answers; follow it with GET. Its SKUs are
    not checked against stock here: inventory reserves every line or none, and an order for
    a SKU it does not hold (or not enough of) ends REJECTED."""
    command = PlaceOrder(
        body.customer_id, tuple(body.items), body.shipping_address, idempotency_key
    )
    order = await with_idempotency_key(
        request.app.state.runtime.new_http_uow,
        lambda uow, look_first: place_order(command, uow, look_first=look_first),
        lost_race=DuplicateIdempotencyKeyError,
        conflict=IdempotencyConflictError,
    )
    return OrderAccepted(
        order_id=order.order_id, status=order.status, correlation_id=order.correlation_id
    )


@router.get("/{order_id}", response_model=OrderView)
async def get_order(order_id: UUID, uow: UowDep) -> OrderView:
    order = await uow.orders.read(order_id)
    if order is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no order {order_id}")
    return OrderView.model_validate(order)


@router.get("", response_model=OrderPage)
async def list_orders(
    uow: UowDep,
    status: OrderStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: UUID | None = None,
) -> OrderPage:
    orders = await uow.orders.list(status, limit, after)
    next_after = orders[-1].order_id if len(orders) == limit else None
    return OrderPage(items=[OrderView.model_validate(o) for o in orders], next_after=next_after)


@router.post("/{order_id}/cancel", status_code=202, response_model=OrderView)
async def post_cancel(order_id: UUID, uow: UowDep) -> OrderView:
    """Cancel. 202 with CANCELLED (before confirmation) or CANCELLING (shipping must agree;
    if the shipment was dispatched first the order ends SHIPPED); 409 once shipped or
    rejected."""
    order = await cancel_order(order_id, uow)  # 404 / 409: the HTTP shell maps the errors
    return OrderView.model_validate(order)


@router.put(
    "/{order_id}/shipping-address",
    status_code=202,
    response_model=OrderView,
    responses={
        429: {
            "description": "only with ADDRESS_CHANGE_RATE_LIMIT set: this order's address"
            " changed faster than the limit; send it again after `Retry-After` seconds",
        }
    },
)
async def put_shipping_address(
    order_id: UUID, body: Address, request: Request, guard: AddressGuardDep
) -> OrderView:
    """Ship somewhere else. 202 with the order as changed; shipping hears of it once the
    edits stop (one `OrderShippingAddressChanged` per burst, after `DEBOUNCE_QUIET_SECONDS`).
    409 once the order ended (shipped, rejected or cancelled); a change that reaches
    shipping after dispatch is not applied, and the order then shows the address the parcel
    went to. With `ADDRESS_CHANGE_RATE_LIMIT` set, 429 past it (with `Retry-After`)."""
    # Counted and refused before a database connection is taken: a storm of edits costs
    # the database nothing past the limit.
    retry_after = guard.admit(str(order_id))
    if retry_after is not None:
        raise ApiError(
            ErrorCode.RATE_LIMITED,
            f"the address of order {order_id} is changing faster than"
            f" ADDRESS_CHANGE_RATE_LIMIT ({guard.limit_per_second:g} a second over"
            f" {guard.window_seconds:g} s); send the latest address again in"
            f" {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )
    # The unit of work is opened here, not as a dependency: a bad body is refused (422)
    # before a database connection is taken, as for POST /orders.
    async with request.app.state.runtime.new_http_uow() as uow:
        order = await change_shipping_address(order_id, body, uow)  # 404 / 409 as for cancel
    return OrderView.model_validate(order)
