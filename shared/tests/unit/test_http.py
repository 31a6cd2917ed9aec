"""The HTTP shell in-process (no lifespan: no database, no Kafka)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.consuming.routing import Router
from shared.observability.correlation import current_correlation_id
from shared.persistence.postgres import PostgresUnitOfWork
from shared.service.http import create_app
from shared.service.runtime import ServiceDefinition
from shared.service.settings import ServiceSettings

routes = APIRouter()


class Body(BaseModel):
    quantity: int


@routes.post("/echo")
async def echo(body: Body) -> dict[str, object]:
    return {"quantity": body.quantity, "correlation_id": current_correlation_id()}


@routes.get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


@routes.get("/deadlock")
async def deadlock() -> None:
    raise asyncpg.DeadlockDetectedError("deadlock detected")


@routes.get("/broken-connection")
async def broken_connection() -> None:
    raise asyncpg.exceptions.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )


@routes.get("/database-down")
async def database_down() -> None:
    raise ConnectionRefusedError("connect call failed")


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ServiceSettings(
        service_name="http-test",
        http_port=0,
        database_url="postgresql://nowhere/none",
        otel_sdk_disabled=True,
        max_body_bytes=1024,
        admin_token="s3cret",
    )
    definition = ServiceDefinition[PostgresUnitOfWork](
        settings=settings,
        title="test",
        description="test",
        router=Router(),
        new_uow=PostgresUnitOfWork,
        migrations=Path("."),
        api_routers=[routes],
    )
    return TestClient(create_app(definition), raise_server_exceptions=False)


def test_a_given_correlation_id_is_used_and_echoed(client: TestClient) -> None:
    response = client.post("/echo", json={"quantity": 1}, headers={"X-Correlation-ID": "abc-1"})
    assert response.headers["x-correlation-id"] == "abc-1"
    assert response.json()["correlation_id"] == "abc-1"


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 200])
def test_a_missing_or_unusable_correlation_id_is_replaced_by_a_new_one(
    client: TestClient, given: str | None
) -> None:
    headers = {} if given is None else {"X-Correlation-ID": given}
    response = client.post("/echo", json={"quantity": 1}, headers=headers)
    generated = response.headers["x-correlation-id"]
    assert generated != given
    assert len(generated) == 36
    assert response.json()["correlation_id"] == generated


def test_validation_errors_are_422_json_with_a_readable_message(client: TestClient) -> None:
    response = client.post("/echo", json={"quantity": "many"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error"
    assert "quantity" in body["message"]
    assert body["details"]


def test_a_body_over_the_limit_is_413_before_anything_reads_it(client: TestClient) -> None:
    response = client.post("/echo", content=b"{" + b" " * 2000 + b"}")
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_an_unexpected_error_is_a_json_500_that_still_carries_the_correlation_id(
    client: TestClient,
) -> None:
    response = client.get("/boom", headers={"X-Correlation-ID": "trace-me"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.headers["x-correlation-id"] == "trace-me"


def test_an_unreachable_database_is_a_503_to_retry(client: TestClient) -> None:
    response = client.get("/database-down")
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
    assert response.headers["retry-after"] == "2"


def test_a_connection_a_database_restart_left_broken_is_a_503_to_retry(
    client: TestClient,
) -> None:
    # Seen in a 30-minute load run, answered 500, right after PostgreSQL was restarted.
    response = client.get("/broken-connection")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


def test_a_deadlock_victim_is_a_503_to_send_again(client: TestClient) -> None:
    response = client.get("/deadlock")
    assert response.status_code == 503
    assert "lost a race" in response.json()["message"]
    assert response.headers["retry-after"] == "1"


def test_the_admin_api_wants_the_token(client: TestClient) -> None:
    assert client.get("/admin/dlq").status_code == 401
    assert client.get("/admin/dlq", headers={"X-Admin-Token": "wrong"}).status_code == 403


def test_unknown_paths_are_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found"}
