"""Orders through all three services, over HTTP, on real PostgreSQL and Kafka."""

from __future__ import annotations

from uuid import uuid4

import httpx

from shared.testing.infra import eventually
from tests.e2e.conftest import Suite, new_sku
from tests.e2e.flow import order_status_becomes, place, restock, stock


async def test_an_order_within_stock_ends_shipped_and_its_stock_is_shipped(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    a, b = new_sku(), new_sku()
    await restock(http, suite.inventory, a, 10)
    await restock(http, suite.inventory, b, 5)
    accepted = await place(
        http, suite.order, [{"sku": a, "quantity": 3}, {"sku": b, "quantity": 5}]
    )
    assert accepted["status"] == "PENDING"

    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"SHIPPED", "REJECTED", "CANCELLED"}
    )
    assert order["status"] == "SHIPPED"
    assert order["version"] == 3  # PENDING -> CONFIRMED -> SHIPPED
    shipment = (await http.get(f"{suite.shipping}/shipments/{accepted['order_id']}")).json()
    assert shipment["status"] == "DISPATCHED"
    # inventory applies ShipmentDispatched on its own: wait for it
    await eventually(
        lambda: stock(http, suite.inventory, a), lambda s: s["shipped"] == 3, timeout=20
    )
    assert await stock(http, suite.inventory, a) == {
        "sku": a, "available": 7, "reserved": 0, "shipped": 3,
    }  # fmt: skip
    assert await stock(http, suite.inventory, b) == {
        "sku": b, "available": 0, "reserved": 0, "shipped": 5,
    }  # fmt: skip


async def test_an_order_beyond_stock_is_rejected_and_stock_is_unchanged(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    a, b = new_sku(), new_sku()
    await restock(http, suite.inventory, a, 10)
    await restock(http, suite.inventory, b, 1)
    accepted = await place(
        http, suite.order, [{"sku": a, "quantity": 2}, {"sku": b, "quantity": 2}]
    )
    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"SHIPPED", "REJECTED", "CANCELLED"}
    )
    assert order["status"] == "REJECTED"
    assert await stock(http, suite.inventory, a) == {
        "sku": a, "available": 10, "reserved": 0, "shipped": 0,
    }  # fmt: skip
    assert await stock(http, suite.inventory, b) == {
        "sku": b, "available": 1, "reserved": 0, "shipped": 0,
    }  # fmt: skip
    response = await http.get(f"{suite.shipping}/shipments/{accepted['order_id']}")
    assert response.status_code == 404


async def test_a_cancelled_order_gives_back_its_stock_and_never_ships(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 4)
    accepted = await place(http, suite.order, [{"sku": sku, "quantity": 4}])
    response = await http.post(f"{suite.order}/orders/{accepted['order_id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["status"] in {"CANCELLED", "CANCELLING"}

    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"SHIPPED", "CANCELLED"}
    )
    assert order["status"] == "CANCELLED"
    await eventually(
        lambda: stock(http, suite.inventory, sku),
        lambda s: s == {"sku": sku, "available": 4, "reserved": 0, "shipped": 0},
        timeout=20,
    )
    shipment = await http.get(f"{suite.shipping}/shipments/{accepted['order_id']}")
    assert shipment.status_code == 404 or shipment.json()["status"] == "CANCELLED"


async def test_a_confirmed_order_cancelled_before_dispatch_ends_cancelled_everywhere(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 2)
    accepted = await place(http, suite.order, [{"sku": sku, "quantity": 2}])
    await order_status_becomes(http, suite.order, accepted["order_id"], {"CONFIRMED"})
    response = await http.post(f"{suite.order}/orders/{accepted['order_id']}/cancel")
    assert response.status_code == 202
    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"SHIPPED", "CANCELLED"}
    )
    shipment = (await http.get(f"{suite.shipping}/shipments/{accepted['order_id']}")).json()
    # Exactly one outcome, agreed by all three services.
    if order["status"] == "CANCELLED":
        assert shipment["status"] == "CANCELLED"
        expected = {"sku": sku, "available": 2, "reserved": 0, "shipped": 0}
    else:
        assert shipment["status"] == "DISPATCHED"
        expected = {"sku": sku, "available": 0, "reserved": 0, "shipped": 2}
    await eventually(lambda: stock(http, suite.inventory, sku), lambda s: s == expected, 20)


async def test_cancelling_a_shipped_order_is_refused_with_409(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 1)
    accepted = await place(http, suite.order, [{"sku": sku, "quantity": 1}])
    await order_status_becomes(http, suite.order, accepted["order_id"], {"SHIPPED"})
    response = await http.post(f"{suite.order}/orders/{accepted['order_id']}/cancel")
    assert response.status_code == 409
    assert "already SHIPPED" in response.json()["message"]


async def test_the_correlation_id_given_is_echoed_stored_and_listed(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 1)
    correlation_id = f"e2e-{uuid4()}"
    accepted = await place(
        http, suite.order, [{"sku": sku, "quantity": 1}], correlation_id=correlation_id
    )
    assert accepted["correlation_id"] == correlation_id
    response = await http.get(f"{suite.order}/orders/{accepted['order_id']}")
    assert response.headers["x-correlation-id"]  # generated when absent
    assert response.json()["correlation_id"] == correlation_id


async def test_the_same_idempotency_key_gives_the_same_order_and_another_body_conflicts(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 5)
    await place(http, suite.order, [{"sku": sku, "quantity": 1}])  # the catalog knows it now
    body = {
        "customer_id": "c1",
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": {"line1": "x", "city": "y", "postal_code": "1", "country": "FR"},
    }
    key = {"Idempotency-Key": str(uuid4())}
    first = await http.post(f"{suite.order}/orders", json=body, headers=key)
    again = await http.post(f"{suite.order}/orders", json=body, headers=key)
    other = await http.post(
        f"{suite.order}/orders", json={**body, "customer_id": "c2"}, headers=key
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["order_id"] == again.json()["order_id"]
    assert other.status_code == 409
    assert "Idempotency-Key" in other.json()["message"]
