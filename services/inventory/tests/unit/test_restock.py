"""A delivery adds stock: ``POST /inventory/{sku}/restock`` with ``{"quantity": n}``. With an
Idempotency-Key (scoped by SKU) a retry adds once and answers what the first restock
answered; the key with another quantity conflicts. The app runs in-process without its
lifespan, on the in-memory unit of work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inventory.api import REPLAYED_HEADER, units_of_work
from inventory.bootstrap import bootstrap
from inventory.commands import AddStock, IdempotencyConflictError, add_stock
from inventory.domain.stock import MAX_STOCK_UNITS, Stock, StockMoved, StockOverflowError
from inventory.repository import RecordedRestock
from inventory.settings import Settings
from inventory.testing import FakeInventoryUnitOfWork, InMemoryRestockLog
from shared.contracts.catalog import StockLevelChanged
from shared.service.http import create_app, unit_of_work
from shared.testing.fakes import InMemoryState, emit_pending
from shared.writing.aggregate import DomainError

# ---- the domain ------------------------------------------------------------------------


def test_adding_stock_adds_to_what_is_free_and_keeps_what_is_reserved() -> None:
    stock = Stock("A", available=5, reserved=2, shipped=1)
    stock.add(3)
    assert (stock.available, stock.reserved, stock.shipped) == (8, 2, 1)


def test_adding_stock_records_the_same_movement_as_setting_it() -> None:
    added, set_ = Stock("A", available=5, reserved=2), Stock("A", available=5, reserved=2)
    added.add(3)
    set_.restock(8)
    assert added.events == set_.events
    assert added.events == [StockMoved(sku="A", available=8, reserved=2, shipped=0)]


@pytest.mark.parametrize("quantity", [0, -1])
def test_adding_nothing_or_less_is_refused(quantity: int) -> None:
    stock = Stock("A", available=5)
    with pytest.raises(DomainError, match="adds at least one unit"):
        stock.add(quantity)
    assert (stock.available, stock.events) == (5, [])


def test_adding_past_the_most_a_sku_can_hold_is_refused() -> None:
    stock = Stock("A", available=5, reserved=10, shipped=MAX_STOCK_UNITS - 20)
    stock.add(5)
    with pytest.raises(StockOverflowError, match=r"adding 1 to available 10 .* would exceed"):
        stock.add(1)
    assert stock.available == 10


# ---- the command -----------------------------------------------------------------------


def uow(state: InMemoryState) -> FakeInventoryUnitOfWork:
    return FakeInventoryUnitOfWork(state, "inventory")


def levels_of(state: InMemoryState, sku: str) -> tuple[int, int, int]:
    stock = state.tables["stock"][sku]
    return stock.available, stock.reserved, stock.shipped


async def test_a_retried_restock_adds_once_and_answers_the_first_levels() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        first = await add_stock(AddStock("A", 5, "delivery-1"), u)
    async with uow(state) as u:  # stock moves in between: the retry still answers the first
        (await u.stock.get_or_create("A")).reserve(2)
        await u.commit()
    async with uow(state) as u:
        again = await add_stock(AddStock("A", 5, "delivery-1"), u)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.levels == first.levels
    assert (first.levels.available, first.levels.reserved) == (5, 0)
    assert levels_of(state, "A") == (3, 2, 0)


async def test_the_same_key_with_another_quantity_conflicts_and_adds_nothing() -> None:
    state = InMemoryState()
    async with uow(state) as u:
        await add_stock(AddStock("A", 5, "delivery-1"), u)
    async with uow(state) as u:
        with pytest.raises(IdempotencyConflictError, match="restock of 5 units of A, not 6"):
            await add_stock(AddStock("A", 6, "delivery-1"), u)
    assert levels_of(state, "A") == (5, 0, 0)


async def test_a_key_is_scoped_by_its_sku() -> None:
    state = InMemoryState()
    for sku in ("A", "B"):
        async with uow(state) as u:
            restocked = await add_stock(AddStock(sku, 4, "delivery-1"), u)
        assert not restocked.replayed
    assert (levels_of(state, "A"), levels_of(state, "B")) == ((4, 0, 0), (4, 0, 0))


async def test_without_a_key_every_restock_adds() -> None:
    state = InMemoryState()
    for _ in range(2):
        async with uow(state) as u:
            await add_stock(AddStock("A", 4), u)
    assert levels_of(state, "A") == (8, 0, 0)
    assert state.tables.get("restocks", {}) == {}


class FailingCommit(FakeInventoryUnitOfWork):
    """Dies at commit, as a process killed before its transaction committed would."""

    async def _commit(self) -> None:
        raise ConnectionError("killed before the commit")


async def test_a_restock_that_never_committed_left_neither_stock_nor_its_record() -> None:
    state = InMemoryState()
    with pytest.raises(ConnectionError):
        async with FailingCommit(state, "inventory") as u:
            await add_stock(AddStock("A", 5, "delivery-1"), u)
    assert state.tables.get("stock", {}) == {}
    assert state.tables.get("restocks", {}) == {}
    async with uow(state) as u:
        retried = await add_stock(AddStock("A", 5, "delivery-1"), u)
    assert not retried.replayed
    assert levels_of(state, "A") == (5, 0, 0)


# ---- over HTTP ---------------------------------------------------------------------------


@pytest.fixture
def state() -> InMemoryState:
    return InMemoryState()


def an_app(new_uow: Callable[[], FakeInventoryUnitOfWork]) -> TestClient:
    settings = Settings(
        database_url="postgresql://nowhere/inventory",
        admin_token="unit-test-token",
        otel_sdk_disabled=True,
    )
    app = create_app(bootstrap(settings))

    async def in_memory() -> AsyncIterator[FakeInventoryUnitOfWork]:
        async with new_uow() as uow:
            yield uow

    app.dependency_overrides[unit_of_work] = in_memory
    app.dependency_overrides[units_of_work] = lambda: new_uow
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(state: InMemoryState) -> TestClient:
    return an_app(lambda: uow(state))


def restock(
    client: TestClient, sku: str, quantity: Any, key: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = client.post(
        f"/inventory/{sku}/restock", json={"quantity": quantity}, headers=headers
    )
    return response.status_code, response.json(), response.headers.get(REPLAYED_HEADER)


def view(sku: str, available: int, reserved: int = 0, shipped: int = 0) -> dict[str, Any]:
    return {"sku": sku, "available": available, "reserved": reserved, "shipped": shipped}


def test_a_restock_adds_to_the_stock_a_put_set(client: TestClient) -> None:
    assert client.put("/inventory/A", json={"available": 5}).status_code == 200
    assert restock(client, "A", 3) == (200, view("A", 8), None)
    assert client.get("/inventory/A").json() == view("A", 8)


def test_a_restock_of_an_unknown_sku_creates_it_as_a_put_does(client: TestClient) -> None:
    assert restock(client, "NEW-1", 3) == (200, view("NEW-1", 3), None)
    assert client.get("/inventory/NEW-1").json() == view("NEW-1", 3)


def test_a_retry_with_the_same_key_adds_once_and_answers_the_first_answer(
    client: TestClient, state: InMemoryState
) -> None:
    first = restock(client, "A", 5, key="delivery-1")
    client.put("/inventory/A", json={"available": 1})  # an operator's set in between
    again = restock(client, "A", 5, key="delivery-1")
    assert first == (200, view("A", 5), None)
    assert again == (200, view("A", 5), "true")
    assert client.get("/inventory/A").json() == view("A", 1)


def test_the_same_key_with_another_quantity_answers_409_and_adds_nothing(
    client: TestClient,
) -> None:
    restock(client, "A", 5, key="delivery-1")
    status, body, _ = restock(client, "A", 7, key="delivery-1")
    assert status == 409
    assert body == {
        "error": "idempotency_key_conflict",
        "message": "Idempotency-Key 'delivery-1' was used for a restock of 5 units of A, not 7",
    }
    assert client.get("/inventory/A").json() == view("A", 5)


def test_the_same_key_on_another_sku_is_another_restock(client: TestClient) -> None:
    assert restock(client, "A", 5, key="delivery-1")[:2] == (200, view("A", 5))
    assert restock(client, "B", 7, key="delivery-1") == (200, view("B", 7), None)


def test_without_a_key_each_request_adds(client: TestClient) -> None:
    restock(client, "A", 5)
    assert restock(client, "A", 5) == (200, view("A", 10), None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"quantity": 0}, "quantity: Input should be greater than 0"),
        ({"quantity": -3}, "quantity: Input should be greater than 0"),
        ({"quantity": 1.5}, "quantity: Input should be a valid integer"),
        ({"quantity": 2.0}, "quantity: Input should be a valid integer"),
        ({"quantity": "5"}, "quantity: Input should be a valid integer"),
        ({"quantity": True}, "quantity: Input should be a valid integer"),
        ({"quantity": None}, "quantity: Input should be a valid integer"),
        ({"quantity": MAX_STOCK_UNITS + 1}, f"less than or equal to {MAX_STOCK_UNITS}"),
        ({}, "quantity: Field required"),
        ({"quantity": 1, "available": 5}, "available: Extra inputs are not permitted"),
        ([1], "body: Input should be a valid dictionary"),
    ],
)
def test_a_malformed_restock_is_refused_with_422_and_creates_nothing(
    client: TestClient, body: Any, message: str
) -> None:
    response = client.post("/inventory/NEW-2/restock", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    assert message in response.json()["message"]
    assert client.get("/inventory/NEW-2").status_code == 404


def test_a_body_that_is_not_json_is_refused_with_422(client: TestClient) -> None:
    response = client.post(
        "/inventory/A/restock", content=b"quantity=5", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "idempotency-key: Value should have at least 1 item"),
        ("k" * 201, "idempotency-key: Value should have at most 200 items"),
        ("k\x01", "idempotency-key: must not contain control characters"),
    ],
)
def test_a_bad_idempotency_key_is_refused_with_422(
    client: TestClient, key: str, message: str
) -> None:
    response = client.post(
        "/inventory/A/restock", json={"quantity": 1}, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]


def test_a_restock_past_the_most_a_sku_can_hold_is_refused_with_422_and_not_recorded(
    client: TestClient, state: InMemoryState
) -> None:
    client.put("/inventory/A", json={"available": MAX_STOCK_UNITS - 1})
    status, body, _ = restock(client, "A", 2, key="delivery-1")
    assert status == 422
    assert body["error"] == "stock_limit_exceeded"
    assert "adding 2 to available" in body["message"]
    assert state.tables.get("restocks", {}) == {}
    assert restock(client, "A", 1, key="delivery-1") == (200, view("A", MAX_STOCK_UNITS), None)


async def test_a_restock_crosses_kafka_debounced_like_a_put(
    client: TestClient, state: InMemoryState
) -> None:
    client.put("/inventory/A", json={"available": 5})
    restock(client, "A", 3, key="delivery-1")
    restock(client, "A", 3, key="delivery-1")  # a retry: no change, no event
    restock(client, "A", 2)
    assert state.outbox.envelopes == []  # held until the SKU is quiet
    assert await emit_pending(state, "inventory") == 1
    [envelope] = state.outbox.envelopes
    assert (envelope.event_type, envelope.aggregate_id) == ("StockLevelChanged", "A")
    assert envelope.payload == StockLevelChanged(
        sku="A", available=10, reserved=0, shipped=0
    ).model_dump(mode="json")


class MissesTheRacingRecordOnce(InMemoryRestockLog):
    """Misses, once, a record that a concurrent request committed: two requests with one key
    raced past the SKU's lock (which the real adapter's lock prevents)."""

    missed = False

    async def get(self, sku: str, idempotency_key: str) -> RecordedRestock | None:
        if not MissesTheRacingRecordOnce.missed:
            MissesTheRacingRecordOnce.missed = True
            return None
        return await super().get(sku, idempotency_key)


class RacingUnitOfWork(FakeInventoryUnitOfWork):
    async def _begin(self) -> None:
        await super()._begin()
        self.restocks = MissesTheRacingRecordOnce(self)


def test_a_request_that_lost_a_race_for_its_key_answers_the_winner_s_restock(
    state: InMemoryState,
) -> None:
    MissesTheRacingRecordOnce.missed = False
    client = an_app(lambda: uow(state))
    assert restock(client, "A", 5, key="delivery-1")[0] == 200
    racing = an_app(lambda: RacingUnitOfWork(state, "inventory"))
    assert restock(racing, "A", 5, key="delivery-1") == (200, view("A", 5), "true")
    assert MissesTheRacingRecordOnce.missed
    assert client.get("/inventory/A").json() == view("A", 5)


def test_the_openapi_schema_tells_a_set_from_a_restock(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    put, post = paths["/inventory/{sku}"]["put"], paths["/inventory/{sku}/restock"]["post"]
    assert "absolute set" in put["summary"]
    assert "POST /inventory/{sku}/restock" in put["description"]
    assert "Add stock" in post["summary"]
    assert "Idempotency-Key" in post["description"]
    assert {"200", "409", "422"} <= set(post["responses"])
    assert REPLAYED_HEADER in post["responses"]["200"]["headers"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StockView"
    }
    assert any(p["name"] == "idempotency-key" for p in post["parameters"])
