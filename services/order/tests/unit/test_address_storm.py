"""The storm guard at the address route: a burst of address changes to one order is seen
(a warning with the order and correlation ids, the metrics), and, only with
ADDRESS_CHANGE_RATE_LIMIT set, the changes past the rate are refused with 429. The app is the
one bootstrap builds, in-process without its lifespan, over the fake unit of work."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from order.bootstrap import bootstrap
from order.settings import Settings
from order.testing import FakeOrderUnitOfWork
from shared.observability.metrics import (
    AGGREGATE_CHANGE_STORMS,
    AGGREGATE_CHANGES_IN_WINDOW,
    AGGREGATE_CHANGES_REFUSED,
)
from shared.service.http import create_app
from shared.testing.fakes import InMemoryState

LABELS = ("order", "order", "shipping_address")
LINE = {"sku": "SKU-1", "quantity": 1}
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


def settings(**overrides: Any) -> Settings:
    return Settings(
        database_url="postgresql://nowhere/order",
        admin_token="unit-test-token",
        otel_sdk_disabled=True,
        **overrides,
    )


def client_of(config: Settings) -> TestClient:
    state = InMemoryState()
    app = create_app(bootstrap(config))
    app.state.runtime.new_http_uow = lambda: FakeOrderUnitOfWork(state, "order")
    return TestClient(app, raise_server_exceptions=False)


def place(client: TestClient) -> str:
    body = {"customer_id": "c-1", "items": [LINE], "shipping_address": ADDRESS}
    response = client.post("/orders", json=body)
    assert response.status_code == 202, response.text
    order_id: str = response.json()["order_id"]
    return order_id


def readdress(client: TestClient, order_id: str, n: int, correlation_id: str = "c") -> Any:
    return client.put(
        f"/orders/{order_id}/shipping-address",
        json=ADDRESS | {"line1": f"{n} Elm St"},
        headers={"X-Correlation-ID": correlation_id},
    )


def histogram(name: str) -> float:
    for metric in AGGREGATE_CHANGES_IN_WINDOW.collect():
        for sample in metric.samples:
            if sample.name == f"aggregate_changes_in_window_{name}" and (
                tuple(sample.labels[k] for k in ("service", "aggregate_type", "change")) == LABELS
            ):
                return sample.value
    return 0.0


def storms() -> float:
    return float(AGGREGATE_CHANGE_STORMS.labels(*LABELS)._value.get())


def refused() -> float:
    return float(AGGREGATE_CHANGES_REFUSED.labels(*LABELS)._value.get())


def test_a_burst_of_address_changes_past_the_threshold_warns_once_with_the_order_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_of(settings())  # the defaults: warn past 1 a second over 10 s, no limit
    order_id = place(client)
    count, total, stormed = histogram("count"), histogram("sum"), storms()

    with caplog.at_level(logging.WARNING, logger="shared.writing.storm"):
        answers = [
            readdress(client, order_id, n, "checkout-storm-1").status_code for n in range(15)
        ]

    assert answers == [202] * 15
    (warning,) = [r for r in caplog.records if "storm guard" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert "11 shipping_address changes to order" in message  # the first one past 10 in 10 s
    assert f"order_id={order_id}" in message
    assert "correlation_id=checkout-storm-1" in message
    assert storms() == stormed + 1
    assert histogram("count") == count + 15
    assert histogram("sum") == total + sum(range(1, 16))  # each request sees its order's count


def test_a_few_changes_to_many_orders_are_no_storm(caplog: pytest.LogCaptureFixture) -> None:
    client = client_of(settings())
    orders = [place(client) for _ in range(4)]
    stormed = storms()
    with caplog.at_level(logging.WARNING, logger="shared.writing.storm"):
        for n in range(10):
            for order_id in orders:
                assert readdress(client, order_id, n).status_code == 202
    assert storms() == stormed
    assert not [r for r in caplog.records if "storm guard" in r.getMessage()]


def test_with_the_limit_set_the_change_past_the_rate_gets_429_and_other_orders_go_on() -> None:
    client = client_of(settings(address_change_rate_limit=0.5))  # 5 changes per 10 s
    busy, other = place(client), place(client)
    before = refused()

    accepted = [readdress(client, busy, n).status_code for n in range(5)]
    response = readdress(client, busy, 5, "checkout-storm-2")

    assert accepted == [202] * 5
    assert response.status_code == 429, response.text
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 10
    body = response.json()
    assert body["error"] == "rate_limited"
    assert body["retry_after"] == int(retry_after)
    assert "ADDRESS_CHANGE_RATE_LIMIT" in body["message"]
    assert response.headers["x-correlation-id"] == "checkout-storm-2"
    assert refused() == before + 1
    # The refused change wrote nothing: the order shows the last accepted address.
    assert client.get(f"/orders/{busy}").json()["shipping_address"]["line1"] == "4 Elm St"
    # Another order has its own allowance.
    assert [readdress(client, other, n).status_code for n in range(5)] == [202] * 5


def test_with_the_limit_off_by_default_no_change_is_ever_refused() -> None:
    client = client_of(settings())
    order_id = place(client)
    before = refused()
    # 60 changes well within one window: past any limit that admits fewer than 60 per 10 s
    answers = {readdress(client, order_id, n).status_code for n in range(60)}
    assert answers == {202}
    assert refused() == before


def test_a_limit_that_admits_less_than_one_change_per_window_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        settings(address_change_rate_limit=0.05, address_change_rate_window_seconds=10)
    assert settings(address_change_rate_limit=0.1).address_change_rate_limit == 0.1
