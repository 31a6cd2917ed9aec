"""Stuck-order detection against real PostgreSQL: the gauge, one log line per newly stuck
order with its correlation id, and the admin list behind the admin token."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from order.bootstrap import MIGRATIONS
from order.stuck import STUCK_ORDERS, StuckOrderWatch
from order.stuck import router as stuck_router
from shared.testing.infra import migrated_pool

AFTER = 600.0


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with migrated_pool(MIGRATIONS) as pool:
        yield pool


async def add_order(pool: asyncpg.Pool, status: str, minutes_ago: int) -> tuple[UUID, str]:
    order_id, correlation_id = uuid4(), f"corr-{uuid4().hex[:8]}"
    await pool.execute(
        """
        INSERT INTO orders (order_id, customer_id, status, items, shipping_address, version,
                            correlation_id, created_at, updated_at)
        VALUES ($1, 'c', $2, '[]', $3, 1, $4, now() - make_interval(mins => $5),
                now() - make_interval(mins => $5))
        """,
        order_id,
        status,
        json.dumps({"line1": "l", "city": "c", "postal_code": "p", "country": "FR"}),
        correlation_id,
        minutes_ago,
    )
    return order_id, correlation_id


async def test_an_order_non_terminal_past_the_bound_is_counted_and_logged_once_with_its_correlation(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, stuck_correlation = await add_order(pool, "PENDING", minutes_ago=30)
    cancelling, _ = await add_order(pool, "CANCELLING", minutes_ago=20)
    await add_order(pool, "PENDING", minutes_ago=1)  # still moving
    for status in ("SHIPPED", "REJECTED", "CANCELLED"):
        await add_order(pool, status, minutes_ago=60)  # finished
    watch = StuckOrderWatch(pool, "order-stuck-test", AFTER)

    with caplog.at_level(logging.WARNING, logger="order.stuck"):
        newly = await watch.check()
    assert [o.order_id for o in newly] == [stuck, cancelling]  # longest stuck first
    assert STUCK_ORDERS.labels("order-stuck-test")._value.get() == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert str(stuck) in lines[0]
    assert stuck_correlation in lines[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="order.stuck"):
        assert await watch.check() == []  # already reported
    assert caplog.records == []

    await pool.execute("UPDATE orders SET status = 'CANCELLED' WHERE order_id = $1", cancelling)
    await watch.check()
    assert STUCK_ORDERS.labels("order-stuck-test")._value.get() == 1


async def test_the_admin_list_shows_stuck_orders_to_the_admin_only(pool: asyncpg.Pool) -> None:
    stuck, correlation = await add_order(pool, "CONFIRMED", minutes_ago=15)
    await add_order(pool, "SHIPPED", minutes_ago=15)
    app = FastAPI()
    app.include_router(stuck_router)
    app.state.runtime = SimpleNamespace(
        settings=SimpleNamespace(admin_token="s3cret", stuck_order_after_seconds=AFTER),
        http_pool=pool,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
        assert (await client.get("/admin/stuck-orders")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/admin/stuck-orders", headers=wrong)).status_code == 403
        response = await client.get(
            "/admin/stuck-orders", headers={"Authorization": "Bearer s3cret"}
        )
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 1
    assert page["after_seconds"] == AFTER
    (item,) = page["items"]
    assert item["order_id"] == str(stuck)
    assert item["status"] == "CONFIRMED"
    assert item["correlation_id"] == correlation
    assert item["stuck_seconds"] >= 15 * 60
