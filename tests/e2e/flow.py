"""Black-box steps shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import httpx

from shared.testing.infra import eventually

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


async def restock(http: httpx.AsyncClient, inventory: str, sku: str, available: int) -> None:
    response = await http.put(f"{inventory}/inventory/{sku}", json={"available": available})
    assert response.status_code == 200, response.text


async def stock(http: httpx.AsyncClient, inventory: str, sku: str) -> dict[str, Any]:
    response = await http.get(f"{inventory}/inventory/{sku}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_order(
    http: httpx.AsyncClient,
    order: str,
    items: list[dict[str, Any]],
    *,
    correlation_id: str | None = None,
    timeout: float = 30,
) -> httpx.Response:
    """``POST /orders``, answered 202 (at once, even right after the SKU was first stocked:
    the order service lets inventory decide)."""
    headers = {"Idempotency-Key": str(uuid4())}
    if correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    body = {"customer_id": "cust-e2e", "items": items, "shipping_address": ADDRESS}
    response = await http.post(f"{order}/orders", json=body, headers=headers, timeout=timeout)
    assert response.status_code == 202, response.text
    return response


async def place(
    http: httpx.AsyncClient,
    order: str,
    items: list[dict[str, Any]],
    *,
    correlation_id: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    """Place an order (see :func:`post_order`); the 202 body."""
    response = await post_order(http, order, items, correlation_id=correlation_id, timeout=timeout)
    accepted: dict[str, Any] = response.json()
    return accepted


async def order_status_becomes(
    http: httpx.AsyncClient, order: str, order_id: str, statuses: set[str], timeout: float = 45
) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        response = await http.get(f"{order}/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    return await eventually(get, lambda o: o["status"] in statuses, timeout, interval=0.3)


async def shipment_becomes(
    http: httpx.AsyncClient, shipping: str, order_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    """The shipment of ``order_id`` once it exists and its status is one of ``statuses``."""

    async def get() -> httpx.Response:
        return await http.get(f"{shipping}/shipments/{order_id}")

    response = await eventually(
        get,
        lambda r: r.status_code == 200 and r.json()["status"] in statuses,
        timeout,
        interval=0.2,
    )
    body: dict[str, Any] = response.json()
    return body


async def list_orders(
    http: httpx.AsyncClient,
    order: str,
    *,
    status: str | None = None,
    after: str | None = None,
    limit: int = 500,
) -> list[list[dict[str, Any]]]:
    """Every page of ``GET /orders`` (filtered by ``status`` when given), following
    ``next_after`` from ``after`` to the end; each page checked for its size, its
    statuses and its ``next_after``."""
    pages: list[list[dict[str, Any]]] = []
    cursor = after
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if cursor is not None:
            params["after"] = cursor
        response = await http.get(f"{order}/orders", params=params)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        items: list[dict[str, Any]] = page["items"]
        assert len(items) <= limit, page
        assert status is None or {o["status"] for o in items} <= {status}, page
        # A full page points at its last order; a short one is the last page.
        assert page["next_after"] == (items[-1]["order_id"] if len(items) == limit else None)
        pages.append(items)
        if page["next_after"] is None:
            return pages
        cursor = page["next_after"]
