"""Bad input gets a clear error and writes nothing."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest

from shared.testing.infra import end_offsets, postgres_url, records_keyed
from tests.e2e.conftest import Suite, new_sku
from tests.e2e.flow import ADDRESS, list_orders, order_status_becomes, place, restock

GOOD_LINE = {"sku": "SKU-1", "quantity": 1}


async def order_rows() -> int:
    conn = await asyncpg.connect(postgres_url("order"))
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM orders")
        return count
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"items": [GOOD_LINE], "shipping_address": ADDRESS}, "customer_id: Field required"),
        (
            {"customer_id": "c", "items": [], "shipping_address": ADDRESS},
            "items: List should have at least 1 item",
        ),
        (
            {"customer_id": "c", "items": [{"sku": "A", "quantity": 0}],
             "shipping_address": ADDRESS},
            "items.0.quantity: Input should be greater than 0",
        ),
        (
            {"customer_id": "c", "items": [{"sku": "A", "quantity": -3}],
             "shipping_address": ADDRESS},
            "items.0.quantity: Input should be greater than 0",
        ),
        (
            {"customer_id": "c", "items": [{"sku": f"S{i}", "quantity": 1} for i in range(51)],
             "shipping_address": ADDRESS},
            "items: List should have at most 50 items",
        ),
        (
            {"customer_id": "c", "items": [GOOD_LINE], "shipping_address": {"line1": "x"}},
            "shipping_address.city: Field required",
        ),
        (
            {"customer_id": "c", "items": [GOOD_LINE, GOOD_LINE], "shipping_address": ADDRESS},
            "each SKU may appear on one line only",
        ),
        (
            {"customer_id": "c", "items": [GOOD_LINE], "shipping_address": ADDRESS, "x": 1},
            "x: Extra inputs are not permitted",
        ),
        (
            {"customer_id": "c\x00", "items": [GOOD_LINE], "shipping_address": ADDRESS},
            "customer_id: must not contain control characters (found U+0000 at position 1)",
        ),
        (
            {"customer_id": "c", "items": [GOOD_LINE],
             "shipping_address": ADDRESS | {"line1": "1 Main\x00St"}},
            "shipping_address.line1: must not contain control characters (found U+0000",
        ),
        (
            {"customer_id": "c", "items": [{"sku": "SKU\x00", "quantity": 1}],
             "shipping_address": ADDRESS},
            "items.0.sku: String should match pattern",
        ),
        (
            {"customer_id": "c", "items": [{"sku": "MUG RED", "quantity": 1}],
             "shipping_address": ADDRESS},
            "items.0.sku: String should match pattern",
        ),
    ],
)  # fmt: skip
async def test_an_invalid_order_is_refused_with_422_and_a_message(
    suite: Suite, http: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    before = await order_rows()
    response = await http.post(f"{suite.order}/orders", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]
    assert await order_rows() == before


async def test_a_body_that_is_not_json_is_refused_with_422(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{suite.order}/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["message"]


async def test_an_order_for_a_sku_inventory_does_not_hold_is_accepted_and_rejected_naming_it(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()  # never stocked: neither inventory nor the order service knows it
    since = await end_offsets("orders")
    accepted = await place(http, suite.order, [{"sku": sku, "quantity": 1}])
    assert accepted["status"] == "PENDING"
    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"REJECTED", "CONFIRMED"}
    )
    assert order["status"] == "REJECTED"
    events = await records_keyed(
        "orders",
        accepted["order_id"],
        since,
        settle=0,
        done=lambda found: any(e["event_type"] == "OrderRejected" for e in found),
    )
    [rejected] = [e for e in events if e["event_type"] == "OrderRejected"]
    assert rejected["payload"]["reason"] == f"not enough stock: {sku} (unknown)"


async def test_an_oversized_body_is_refused_with_413(suite: Suite, http: httpx.AsyncClient) -> None:
    before = await order_rows()
    body = {"customer_id": "c" * 100_000, "items": [GOOD_LINE], "shipping_address": ADDRESS}
    response = await http.post(f"{suite.order}/orders", json=body)
    assert response.status_code == 413
    assert "larger than" in response.json()["message"]
    assert await order_rows() == before


async def test_unknown_ids_are_404_and_malformed_ids_422(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    unknown = uuid4()
    assert (await http.get(f"{suite.order}/orders/{unknown}")).status_code == 404
    assert (await http.post(f"{suite.order}/orders/{unknown}/cancel")).status_code == 404
    assert (await http.get(f"{suite.shipping}/shipments/{unknown}")).status_code == 404
    assert (await http.get(f"{suite.inventory}/inventory/{new_sku()}")).status_code == 404
    assert (await http.get(f"{suite.order}/orders/not-a-uuid")).status_code == 422
    not_found = await http.get(f"{suite.order}/orders/{unknown}")
    assert not_found.json() == {"error": "not_found", "message": f"no order {unknown}"}


async def test_negative_stock_is_refused(suite: Suite, http: httpx.AsyncClient) -> None:
    sku = new_sku()
    response = await http.put(f"{suite.inventory}/inventory/{sku}", json={"available": -1})
    assert response.status_code == 422
    assert "available" in response.json()["message"]
    assert (await http.get(f"{suite.inventory}/inventory/{sku}")).status_code == 404


async def test_the_order_list_pages_and_filters_by_status(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku, scarce = new_sku(), new_sku()
    await restock(http, suite.inventory, sku, 10)
    await restock(http, suite.inventory, scarce, 1)
    # Listing after this order sees only what the test places next (the list runs in
    # creation order), however many orders the database already holds.
    start = (await place(http, suite.order, [{"sku": sku, "quantity": 1}]))["order_id"]
    placed = {
        (await place(http, suite.order, [line]))["order_id"]: status
        for line, status in [
            ({"sku": sku, "quantity": 1}, "SHIPPED"),
            ({"sku": scarce, "quantity": 2}, "REJECTED"),
            ({"sku": sku, "quantity": 1}, "SHIPPED"),
        ]
    }
    for order_id, status in placed.items():
        order = await order_status_becomes(
            http, suite.order, order_id, {"SHIPPED", "REJECTED", "CANCELLED"}
        )
        assert order["status"] == status

    pages = await list_orders(http, suite.order, after=start, limit=2)
    listed = [o["order_id"] for page in pages for o in page]
    assert len(pages) >= 2
    assert len(listed) == len(set(listed))  # no order on two pages
    assert [i for i in listed if i in placed] == list(placed)  # all of them, in order
    for status in ("SHIPPED", "REJECTED"):
        pages = await list_orders(http, suite.order, status=status, after=start, limit=2)
        found = {o["order_id"] for page in pages for o in page} & placed.keys()
        assert found == {i for i, s in placed.items() if s == status}, status

    bad = await http.get(f"{suite.order}/orders", params={"status": "LOST"})
    assert bad.status_code == 422


@pytest.mark.parametrize("service", ["order", "inventory", "shipping"])
async def test_every_service_has_health_readiness_metrics_and_docs(
    suite: Suite, http: httpx.AsyncClient, service: str
) -> None:
    base = getattr(suite, service)
    assert (await http.get(f"{base}/health")).json()["status"] == "ok"
    ready = await http.get(f"{base}/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "kafka": True}
    metrics = (await http.get(f"{base}/metrics")).text
    assert "outbox_backlog" in metrics
    assert (await http.get(f"{base}/docs")).status_code == 200
    assert (await http.get(f"{base}/openapi.json")).json()["info"]["title"]
