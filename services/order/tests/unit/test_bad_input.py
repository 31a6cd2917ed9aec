"""Text with a control character is refused at the edge with 422 (PostgreSQL would refuse a
NUL later, with a 500). The app runs in-process without its lifespan: nothing behind the
edge is reached."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from order.bootstrap import bootstrap
from order.settings import Settings
from shared.service.http import create_app

TOKEN = "unit-test-token"
LINE = {"sku": "SKU-1", "quantity": 1}
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}
ORDER = {"customer_id": "c-1", "items": [LINE], "shipping_address": ADDRESS}


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = Settings(
        database_url="postgresql://nowhere/order", admin_token=TOKEN, otel_sdk_disabled=True
    )
    return TestClient(create_app(bootstrap(settings)), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (ORDER | {"customer_id": "c\x00-1"}, "customer_id"),
        *[
            (ORDER | {"shipping_address": ADDRESS | {name: "x\x00y"}}, f"shipping_address.{name}")
            for name in ("line1", "city", "postal_code")  # country has a pattern: ^[A-Z]{2}$
        ],
        (ORDER | {"customer_id": "c\n-1"}, "customer_id"),
    ],
)  # fmt: skip
def test_a_control_character_in_an_order_is_refused_with_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/orders", json=body)
    assert response.status_code == 422, response.text
    assert f"{field}: must not contain control characters" in response.json()["message"]


@pytest.mark.parametrize("sku", ["", "MUG RED", "MUG/RED", "MUG\x00RED", "MÜG-RED", "M" * 65])
def test_a_sku_inventory_could_never_hold_is_refused_with_422_naming_the_line(
    client: TestClient, sku: str
) -> None:
    # Refused before the database (there is none): such an order could never be filled.
    response = client.post("/orders", json=ORDER | {"items": [{"sku": sku, "quantity": 1}]})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert response.json()["message"].startswith("items.0.sku: ")


def test_the_same_sku_on_two_lines_is_refused_with_422(client: TestClient) -> None:
    response = client.post("/orders", json=ORDER | {"items": [LINE, LINE | {"quantity": 2}]})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert "items: Value error, each SKU may appear on one line only" in response.json()["message"]


def test_a_control_character_in_the_idempotency_key_is_refused(client: TestClient) -> None:
    response = client.post("/orders", json=ORDER, headers={"Idempotency-Key": "k\x01"})
    assert response.status_code == 422, response.text
    assert "idempotency-key: must not contain control characters" in response.json()["message"]


def test_a_control_character_in_the_flow_query_is_refused(client: TestClient) -> None:
    response = client.get("/flow/api", params={"q": "checkout\x00"})
    assert response.status_code == 422, response.text
    assert "q: must not contain control characters" in response.json()["message"]


def test_a_control_character_in_the_dead_letter_filter_is_refused(client: TestClient) -> None:
    response = client.get(
        "/admin/dlq",
        params={"correlation_id": "c\x00"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 422, response.text
    assert "correlation_id: must not contain control characters" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        ADDRESS | {"country": "France"},
        ADDRESS | {"line1": ""},
        ADDRESS | {"city": "x\x00y"},
        {k: v for k, v in ADDRESS.items() if k != "postal_code"},
        [],
    ],
)
def test_a_malformed_address_change_is_refused_with_422_before_the_database(
    client: TestClient, body: Any
) -> None:
    order_id = "00000000-0000-0000-0000-000000000001"
    response = client.put(f"/orders/{order_id}/shipping-address", json=body)
    assert response.status_code == 422, response.text


def test_an_address_change_needs_an_order_id(client: TestClient) -> None:
    response = client.put("/orders/not-a-uuid/shipping-address", json=ADDRESS)
    assert response.status_code == 422, response.text
