"""The process entry point of every service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvicorn

from shared.observability.logs import setup_logging
from shared.persistence.db import migrate, wait_for_database
from shared.service.http import create_app
from shared.service.runtime import ServiceDefinition


def serve(bootstrap: Callable[[], ServiceDefinition[Any]]) -> None:
    """Process entry point of a service: pre-start (database, migrations), then HTTP."""
    definition = bootstrap()
    settings = definition.settings
    setup_logging(settings.service_name, settings.log_level)
    asyncio.run(wait_for_database(settings.database_url))
    migrate(definition.migrations, settings.database_url)
    uvicorn.run(
        create_app(definition),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=10,
        limit_concurrency=1000,
    )
