"""The whole suite, started by the same launcher as ``make start``, driven over HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import uuid4

import httpx
import pytest

from infra import components

# Short timings so a flow finishes in seconds; the launcher passes them to the services.
TEST_ENV = {
    "DISPATCH_DELAY_SECONDS": "1.5",
    "PARKED_GAP_TIMEOUT_SECONDS": "30",
    "ADMIN_TOKEN": "e2e-admin-token",
    "OTEL_BSP_SCHEDULE_DELAY": "300",  # spans reach Jaeger within a second
}
ADMIN = {"Authorization": f"Bearer {TEST_ENV['ADMIN_TOKEN']}"}


@dataclass(frozen=True)
class Suite:
    order: str
    inventory: str
    shipping: str
    jaeger: str


@pytest.fixture(scope="session")
def suite() -> Iterator[Suite]:
    saved = {k: os.environ.get(k) for k in TEST_ENV}
    os.environ.update(TEST_ENV)
    components.stop(*components.SERVICES)  # restart them with the test timings
    components.start()
    ports = components.ports()
    try:
        yield Suite(
            order=f"http://127.0.0.1:{ports.order}",
            inventory=f"http://127.0.0.1:{ports.inventory}",
            shipping=f"http://127.0.0.1:{ports.shipping}",
            jaeger=f"http://127.0.0.1:{ports.jaeger_ui}",
        )
    finally:
        components.stop(*components.SERVICES)
        _restore(saved)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def new_sku() -> str:
    return f"SKU-{uuid4().hex[:8]}"


@contextmanager
def restarted_with(service: str, **env: str) -> Iterator[None]:
    """Run ``service`` with extra environment (a failpoint, say) inside the block, and
    restart it as before afterwards ("deploying the fix")."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        components.restart(service)
    finally:
        _restore(saved)
    try:
        yield
    finally:
        components.restart(service)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
