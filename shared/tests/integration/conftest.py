from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.service.settings import ServiceSettings
from shared.testing.infra import create_database, drop_database, kafka_bootstrap, unique


@pytest.fixture
async def database() -> AsyncIterator[str]:
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=8)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def settings(database: str) -> ServiceSettings:
    return ServiceSettings(
        service_name=unique("it"),
        http_port=0,
        database_url=database,
        kafka_bootstrap_servers=kafka_bootstrap(),
        otel_sdk_disabled=True,
        relay_poll_interval_seconds=0.2,
        consumer_retry_backoff_seconds=0.05,
        consumer_max_attempts=3,
        admin_token="integration-test-token",
    )
