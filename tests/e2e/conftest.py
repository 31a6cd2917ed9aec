"""The whole suite, started by the same launcher as ``make start``, driven over HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
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
}


@dataclass(frozen=True)
class Suite:
    order: str
    inventory: str
    shipping: str


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
        )
    finally:
        components.stop(*components.SERVICES)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def new_sku() -> str:
    return f"SKU-{uuid4().hex[:8]}"
