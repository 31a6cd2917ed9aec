"""Stock counters stay in range: a SKU holds at most MAX_STOCK_UNITS in all, and a restock
past that is refused (422 over HTTP) instead of overflowing a counter later, in a dispatch."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from inventory.bootstrap import bootstrap
from inventory.domain.stock import MAX_STOCK_UNITS, Stock, StockOverflowError
from inventory.settings import Settings
from inventory.testing import FakeInventoryUnitOfWork
from shared.service.http import create_app, unit_of_work
from shared.testing.fakes import InMemoryState


def test_a_restock_may_fill_a_sku_up_to_the_most_it_can_hold() -> None:
    stock = Stock("A", reserved=10, shipped=MAX_STOCK_UNITS - 15)
    stock.restock(5)
    assert stock.available + stock.reserved + stock.shipped == MAX_STOCK_UNITS


def test_a_restock_past_the_most_a_sku_can_hold_is_refused() -> None:
    stock = Stock("A", reserved=10, shipped=MAX_STOCK_UNITS - 15)
    with pytest.raises(StockOverflowError, match="would exceed the most a SKU can hold"):
        stock.restock(6)
    assert stock.available == 0


@pytest.fixture
def state() -> InMemoryState:
    return InMemoryState()


@pytest.fixture
def client(state: InMemoryState) -> TestClient:
    settings = Settings(
        database_url="postgresql://nowhere/inventory",
        admin_token="unit-test-token",
        otel_sdk_disabled=True,
    )
    app = create_app(bootstrap(settings))

    async def in_memory() -> AsyncIterator[FakeInventoryUnitOfWork]:
        async with FakeInventoryUnitOfWork(state, "inventory") as uow:
            yield uow

    app.dependency_overrides[unit_of_work] = in_memory
    return TestClient(app, raise_server_exceptions=False)


def test_a_stock_level_past_2_to_the_31_is_accepted(client: TestClient) -> None:
    response = client.put("/inventory/A", json={"available": 3_000_000_000})
    assert response.status_code == 200, response.text
    assert response.json()["available"] == 3_000_000_000


def test_a_stock_level_over_the_maximum_is_refused_with_422(client: TestClient) -> None:
    response = client.put("/inventory/A", json={"available": MAX_STOCK_UNITS + 1})
    assert response.status_code == 422, response.text
    assert f"less than or equal to {MAX_STOCK_UNITS}" in response.json()["message"]


async def test_a_restock_that_would_overflow_what_was_shipped_is_refused_with_422(
    client: TestClient, state: InMemoryState
) -> None:
    async with FakeInventoryUnitOfWork(state, "inventory") as uow:
        stock = await uow.stock.get_or_create("A")
        stock.restock(MAX_STOCK_UNITS)
        stock.reserve(MAX_STOCK_UNITS)
        stock.ship(MAX_STOCK_UNITS)
        await uow.commit()
    response = client.put("/inventory/A", json={"available": 1})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "stock_limit_exceeded"
    assert "would exceed the most a SKU can hold" in response.json()["message"]
