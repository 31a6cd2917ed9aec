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


async def place(
    http: httpx.AsyncClient,
    order: str,
    items: list[dict[str, Any]],
    *,
    correlation_id: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    """Place an order once the order service has heard of its SKUs (the catalog replica
    follows the ``stock`` topic). One Idempotency-Key makes the retries safe."""
    headers = {"Idempotency-Key": str(uuid4())}
    if correlation_id:
        headers["X-Correlation-ID"] = correlation_id
    body = {"customer_id": "cust-e2e", "items": items, "shipping_address": ADDRESS}

    async def attempt() -> httpx.Response:
        return await http.post(f"{order}/orders", json=body, headers=headers)

    response = await eventually(
        attempt, lambda r: r.status_code != 422 or "unknown SKU" not in r.text, timeout
    )
    assert response.status_code == 202, response.text
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
