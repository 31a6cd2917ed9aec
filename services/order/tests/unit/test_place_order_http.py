"""``POST /orders`` over HTTP: the app bootstrap builds, in-process without its lifespan, over
the fake unit of work. The order service takes a well-formed SKU it has not heard of and lets
inventory decide; every refusal names itself with its code."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from order.bootstrap import bootstrap
from order.settings import Settings
from order.testing import FakeOrderUnitOfWork
from shared.service.http import create_app
from shared.testing.fakes import InMemoryState

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}
ORDER = {
    "customer_id": "cust-42",
    "items": [{"sku": "MUG-RED", "quantity": 2}],
    "shipping_address": ADDRESS,
}


@pytest.fixture
def state() -> InMemoryState:
    return InMemoryState()  # its catalog is empty: no StockLevelChanged has come in


@pytest.fixture
def client(state: InMemoryState) -> TestClient:
    settings = Settings(
        database_url="postgresql://nowhere/order",
        admin_token="unit-test-token",
        otel_sdk_disabled=True,
    )
    app = create_app(bootstrap(settings))
    app.state.runtime.new_http_uow = lambda: FakeOrderUnitOfWork(state, "order")
    return TestClient(app, raise_server_exceptions=False)


def post(client: TestClient, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/orders", json=body, headers=headers)


def test_an_order_for_a_sku_not_heard_of_yet_is_accepted_and_goes_to_inventory(
    client: TestClient, state: InMemoryState
) -> None:
    # The README's first order: right after the PUT of a new SKU, before its
    # StockLevelChanged reaches this service.
    response = post(client, ORDER, key="first-order")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "PENDING"
    [placed] = state.outbox.envelopes
    assert placed.event_type == "OrderPlaced"
    assert placed.aggregate_id == response.json()["order_id"]
    assert placed.payload["items"] == [{"sku": "MUG-RED", "quantity": 2}]


def test_the_same_key_and_body_answer_the_same_order(
    client: TestClient, state: InMemoryState
) -> None:
    first, again = post(client, ORDER, key="k-1"), post(client, ORDER, key="k-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["order_id"] == first.json()["order_id"]
    assert len(state.outbox.envelopes) == 1


def test_the_same_key_with_another_body_is_an_idempotency_key_conflict(
    client: TestClient, state: InMemoryState
) -> None:
    assert post(client, ORDER, key="k-2").status_code == 202
    response = post(client, ORDER | {"customer_id": "someone-else"}, key="k-2")
    assert response.status_code == 409, response.text
    assert response.json() == {
        "error": "idempotency_key_conflict",
        "message": "Idempotency-Key 'k-2' was used for another request",
    }
    assert len(state.outbox.envelopes) == 1


def test_an_unknown_order_is_not_found(client: TestClient) -> None:
    order_id = "00000000-0000-0000-0000-000000000001"
    response = client.get(f"/orders/{order_id}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": f"no order {order_id}"}
