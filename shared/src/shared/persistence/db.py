"""Database start-up: wait for PostgreSQL, run the service's Alembic migrations, open a pool."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config

from shared.observability.redaction import redact

log = logging.getLogger(__name__)

# Errors that say the database is unreachable or restarting, not that the work is wrong:
# whoever meets them waits and tries again, and never dead-letters because of them.
TRANSIENT_DATABASE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.TooManyConnectionsError,
    # A pooled connection the server cut mid-operation (a restart) that asyncpg handed out
    # again (MagicStack/asyncpg#784): the unit of work discards it; the work is retried.
    asyncpg.exceptions.InternalClientError,
)
# The transaction lost a race with another one, through no fault of its own: PostgreSQL chose
# it as the victim of a deadlock, or of a serialization conflict. Running it again is the fix.
LOST_RACE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    *TRANSIENT_DATABASE_ERRORS,
    asyncpg.PostgresError,
)


async def wait_for_database(url: str, timeout: float = 60.0) -> None:
    """Return once a connection succeeds; raise after ``timeout`` seconds of failures."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    redact(f"database {url} unreachable for {timeout:.0f}s: {exc}")
                ) from exc
            log.info("waiting for the database (%s)", redact(str(exc)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            await conn.close()
            return


def migrate(migrations_dir: Path, url: str) -> None:
    """``alembic upgrade head`` for one service (blocking; call before serving)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


async def create_pool(url: str, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=1, max_size=max_size, command_timeout=30, reset=keep_session
    )
    assert pool is not None
    return pool


async def keep_session(_: asyncpg.Connection) -> None:
    """A pooled connection's reset on release: nothing more than asyncpg's own part (a
    transaction left open is rolled back). asyncpg's default also sends
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release:
    one more round trip per unit of work, about ten per order in each service, for session
    state no code here sets on a pooled connection (the relay's advisory lock lives on a
    connection of its own; ``SET LOCAL`` ends with its transaction)."""
