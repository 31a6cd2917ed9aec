"""Unit-of-work factories for contract tests: the same cases run against the in-memory
fake and against real PostgreSQL with the service's own migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg

from shared.testing.fakes import InMemoryState
from shared.testing.infra import create_database, drop_database
from shared.writing.uow import UnitOfWork

U = TypeVar("U", bound=UnitOfWork)


@asynccontextmanager
async def postgres_units(
    new_uow: Callable[[asyncpg.Pool, str], U], migrations: Path, source: str
) -> AsyncIterator[Callable[[], U]]:
    url = await create_database(migrations)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield lambda: new_uow(pool, source)
    finally:
        await pool.close()
        await drop_database(url)


@asynccontextmanager
async def in_memory_units(
    new_uow: Callable[[InMemoryState, str], U], source: str
) -> AsyncIterator[Callable[[], U]]:
    state = InMemoryState()
    yield lambda: new_uow(state, source)


@asynccontextmanager
async def units(
    backend: str,
    fake: Callable[[InMemoryState, str], U],
    real: Callable[[asyncpg.Pool, str], U],
    migrations: Path,
    source: str,
) -> AsyncIterator[Callable[[], U]]:
    """``backend`` is ``"in_memory"`` or ``"postgres"``."""
    if backend == "in_memory":
        async with in_memory_units(fake, source) as factory:
            yield factory
    else:
        async with postgres_units(real, migrations, source) as factory:
            yield factory
