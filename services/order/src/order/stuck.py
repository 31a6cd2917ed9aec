"""Orders that stay non-terminal past a bound: the saga is hanging somewhere (an event
dead-lettered or parked on its way, a service down). Made visible three ways: the
``orders_stuck`` gauge, one warning log line per order when it becomes stuck (with its
correlation id, to follow in the event-flow view and the dead-letter lists), and
``GET /admin/stuck-orders``."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import Gauge
from pydantic import BaseModel

from order.domain.order import TERMINAL, OrderStatus
from shared.observability.correlation import correlated
from shared.persistence.db import DATABASE_ERRORS
from shared.service.admin import require_admin

log = logging.getLogger(__name__)

STUCK_ORDERS = Gauge(
    "orders_stuck",
    "Orders non-terminal for longer than STUCK_ORDER_AFTER_SECONDS since their last change",
    ["service"],
)

OPEN_STATUSES = sorted(set(OrderStatus) - TERMINAL)


class StuckOrder(BaseModel):
    order_id: UUID
    status: OrderStatus
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    stuck_seconds: float


class StuckOrderPage(BaseModel):
    items: list[StuckOrder]
    count: int
    after_seconds: float


async def stuck_orders(
    pool: asyncpg.Pool, after_seconds: float, limit: int
) -> tuple[list[StuckOrder], int]:
    """The orders unchanged and non-terminal for ``after_seconds``, longest stuck first (at
    most ``limit``), and how many there are in all."""
    rows = await pool.fetch(
        """
        SELECT order_id, status, correlation_id, created_at, updated_at,
               extract(epoch FROM now() - updated_at)::float8 AS stuck_seconds,
               count(*) OVER () AS total
        FROM orders
        WHERE status = ANY($1::text[]) AND updated_at < now() - make_interval(secs => $2)
        ORDER BY updated_at, order_id LIMIT $3
        """,
        OPEN_STATUSES,
        after_seconds,
        limit,
    )
    total = rows[0]["total"] if rows else 0
    return [StuckOrder.model_validate(dict(r)) for r in rows], total


class StuckOrderWatch:
    """Refreshes the gauge and logs each order once when it becomes stuck (again after it
    moved and got stuck anew)."""

    LOGGED_AT_MOST = 1000  # log lines per check: a mass outage is one alert, not a flood

    def __init__(self, pool: asyncpg.Pool, service: str, after_seconds: float) -> None:
        self._pool = pool
        self._service = service
        self._after = after_seconds
        self._seen: dict[UUID, datetime] = {}  # stuck order -> its updated_at when logged

    async def check(self) -> list[StuckOrder]:
        """One check; returns the orders that became stuck since the last one."""
        stuck, total = await stuck_orders(self._pool, self._after, self.LOGGED_AT_MOST)
        STUCK_ORDERS.labels(self._service).set(total)
        new = [o for o in stuck if self._seen.get(o.order_id) != o.updated_at]
        self._seen = {o.order_id: o.updated_at for o in stuck}
        for order in new:
            with correlated(order.correlation_id, None):
                log.warning(
                    "order %s stuck in %s for %.0fs (correlation id %s)",
                    order.order_id,
                    order.status,
                    order.stuck_seconds,
                    order.correlation_id,
                    extra={"fields": {"order_id": str(order.order_id), "status": order.status}},
                )
        return new


async def watch_stuck_orders(runtime: Any) -> None:
    """The worker: a check every ``STUCK_ORDER_CHECK_SECONDS``."""
    settings = runtime.settings
    watch = StuckOrderWatch(runtime.pool, runtime.service, settings.stuck_order_after_seconds)
    while True:
        try:
            await watch.check()
        except DATABASE_ERRORS as exc:
            log.warning("stuck-order check skipped: %s", exc)
        await asyncio.sleep(settings.stuck_order_check_seconds)


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get(
    "/stuck-orders",
    response_model=StuckOrderPage,
    summary="Orders non-terminal past STUCK_ORDER_AFTER_SECONDS, longest stuck first",
)
async def list_stuck_orders(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> StuckOrderPage:
    runtime = request.app.state.runtime
    after: float = runtime.settings.stuck_order_after_seconds
    items, count = await stuck_orders(runtime.http_pool, after, limit)
    return StuckOrderPage(items=items, count=count, after_seconds=after)
