"""Orders through all three services, over HTTP, on real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import httpx

from shared.testing.infra import eventually
from tests.e2e.conftest import TEST_ENV, Suite, new_sku, restarted_with
from tests.e2e.flow import (
    list_orders,
    order_status_becomes,
    place,
    post_order,
    restock,
    shipment_becomes,
    stock,
)


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
    # Shipping holds its shipments far longer than this test lasts, so the cancel comes
    # first whether the order is still PENDING or already CONFIRMED when it arrives.
    with restarted_with("shipping", DISPATCH_DELAY_SECONDS="300"):
        accepted = await place(http, suite.order, [{"sku": sku, "quantity": 4}])
        order_id = accepted["order_id"]
        # Cancel once inventory holds the stock for the order, so giving it back shows.
        await eventually(
            lambda: stock(http, suite.inventory, sku),
            lambda s: s == {"sku": sku, "available": 0, "reserved": 4, "shipped": 0},
            timeout=20,
        )
        response = await http.post(f"{suite.order}/orders/{order_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] in {"CANCELLED", "CANCELLING"}

        order = await order_status_becomes(http, suite.order, order_id, {"SHIPPED", "CANCELLED"})
        assert order["status"] == "CANCELLED"
        await eventually(
            lambda: stock(http, suite.inventory, sku),
            lambda s: s == {"sku": sku, "available": 4, "reserved": 0, "shipped": 0},
            timeout=20,
        )
        shipment = await http.get(f"{suite.shipping}/shipments/{order_id}")
        assert shipment.status_code == 404 or shipment.json()["status"] == "CANCELLED"


async def test_a_confirmed_order_cancelled_before_dispatch_ends_cancelled_everywhere(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 2)
    # Shipping holds its shipments far longer than this test lasts, so the cancel surely
    # reaches a shipment that is still SCHEDULED: the outcome is CANCELLED, not a race.
    with restarted_with("shipping", DISPATCH_DELAY_SECONDS="300"):
        accepted = await place(http, suite.order, [{"sku": sku, "quantity": 2}])
        order_id = accepted["order_id"]
        await order_status_becomes(http, suite.order, order_id, {"CONFIRMED"})
        await shipment_becomes(http, suite.shipping, order_id, {"SCHEDULED"})
        assert await stock(http, suite.inventory, sku) == {
            "sku": sku, "available": 0, "reserved": 2, "shipped": 0,
        }  # fmt: skip

        response = await http.post(f"{suite.order}/orders/{order_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "CANCELLING"  # shipping must agree first

        order = await order_status_becomes(http, suite.order, order_id, {"SHIPPED", "CANCELLED"})
        assert order["status"] == "CANCELLED"
        shipment = await http.get(f"{suite.shipping}/shipments/{order_id}")
        assert shipment.status_code == 200, shipment.text
        assert shipment.json()["status"] == "CANCELLED"
        await eventually(
            lambda: stock(http, suite.inventory, sku),
            lambda s: s == {"sku": sku, "available": 2, "reserved": 0, "shipped": 0},
            timeout=20,
        )


async def test_cancels_racing_the_dispatch_each_end_one_way_that_all_three_services_agree_on(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    """Cancels sent from well before to just after the moment shipping dispatches: either
    may win, but exactly one does, and order, shipping and inventory tell the same story."""

    async def cancel_after(delay: float) -> None:
        sku = new_sku()
        await restock(http, suite.inventory, sku, 2)
        accepted = await place(http, suite.order, [{"sku": sku, "quantity": 2}])
        order_id = accepted["order_id"]
        await shipment_becomes(http, suite.shipping, order_id, {"SCHEDULED"})
        await asyncio.sleep(delay)
        response = await http.post(f"{suite.order}/orders/{order_id}/cancel")
        assert response.status_code in {202, 409}, response.text
        order = await order_status_becomes(http, suite.order, order_id, {"SHIPPED", "CANCELLED"})
        shipment = await http.get(f"{suite.shipping}/shipments/{order_id}")
        assert shipment.status_code == 200, shipment.text
        if order["status"] == "CANCELLED":
            assert response.status_code == 202
            assert shipment.json()["status"] == "CANCELLED"
            expected = {"sku": sku, "available": 2, "reserved": 0, "shipped": 0}
        else:
            assert shipment.json()["status"] == "DISPATCHED"
            expected = {"sku": sku, "available": 0, "reserved": 0, "shipped": 2}
        await eventually(lambda: stock(http, suite.inventory, sku), lambda s: s == expected, 20)

    dispatch_delay = float(TEST_ENV["DISPATCH_DELAY_SECONDS"])
    async with asyncio.TaskGroup() as race:
        for step in range(8):
            race.create_task(cancel_after(dispatch_delay * step / 4))


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
    response = await post_order(
        http, suite.order, [{"sku": sku, "quantity": 1}], correlation_id=correlation_id
    )
    assert response.headers["x-correlation-id"] == correlation_id
    accepted = response.json()
    assert accepted["correlation_id"] == correlation_id
    order_id = accepted["order_id"]

    stored = await http.get(f"{suite.order}/orders/{order_id}")
    assert stored.json()["correlation_id"] == correlation_id
    # This request gave none: it gets its own, not the order's.
    assert stored.headers["x-correlation-id"] not in {"", correlation_id}

    await order_status_becomes(http, suite.order, order_id, {"SHIPPED"})
    listed = [
        o
        for page in await list_orders(http, suite.order, status="SHIPPED")
        for o in page
        if o["order_id"] == order_id
    ]
    assert [o["correlation_id"] for o in listed] == [correlation_id]


async def test_the_same_idempotency_key_gives_the_same_order_and_another_body_conflicts(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 5)
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
    assert other.json()["error"] == "idempotency_key_conflict"
    assert "Idempotency-Key" in other.json()["message"]
