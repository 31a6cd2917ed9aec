"""HTTP entrypoints of the shipping service."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.catalog import Address
from shared.service.http import ApiError, ErrorCode, unit_of_work
from shipping.domain.shipment import ShipmentStatus
from shipping.repository import ShippingUnitOfWork

router = APIRouter(prefix="/shipments", tags=["shipments"])
UowDep = Annotated[ShippingUnitOfWork, Depends(unit_of_work)]


class ShipmentView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    order_id: UUID
    shipment_id: UUID
    status: ShipmentStatus
    dispatch_at: datetime
    created_at: datetime
    updated_at: datetime
    shipping_address: Address | None = Field(
        description="where it goes (where it went, once DISPATCHED); null for a shipment"
        " cancelled before it was scheduled"
    )
    dispatch_error: str | None = Field(
        None,
        description="why the dispatcher set this SCHEDULED shipment aside instead of"
        " dispatching it (see docs/operations.md); null otherwise",
    )


@router.get("/{order_id}", response_model=ShipmentView)
async def get_shipment(order_id: UUID, uow: UowDep) -> ShipmentView:
    shipment = await uow.shipments.read(order_id)
    if shipment is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no shipment for order {order_id}")
    return ShipmentView.model_validate(shipment)
