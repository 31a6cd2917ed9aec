"""Text with a control character is refused at the edge with 422. The app runs in-process
without its lifespan, on the in-memory unit of work: a request that got past validation
would be answered from it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient

from inventory.bootstrap import bootstrap
from inventory.settings import Settings
from inventory.testing import FakeInventoryUnitOfWork
from shared.service.http import create_app, unit_of_work
from shared.testing.fakes import InMemoryState


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = Settings(
        database_url="postgresql://nowhere/inventory",
        admin_token="unit-test-token",
        otel_sdk_disabled=True,
    )
    app = create_app(bootstrap(settings))
    state = InMemoryState()

    async def in_memory() -> AsyncIterator[FakeInventoryUnitOfWork]:
        async with FakeInventoryUnitOfWork(state, "inventory") as uow:
            yield uow

    app.dependency_overrides[unit_of_work] = in_memory
    return TestClient(app, raise_server_exceptions=False)


def test_a_control_character_in_the_paging_cursor_is_refused(client: TestClient) -> None:
    response = client.get("/inventory", params={"after": "SKU\x00"})
    assert response.status_code == 422, response.text
    assert "after: must not contain control characters" in response.json()["message"]
