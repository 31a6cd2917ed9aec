"""The services' connection pool against real PostgreSQL: a released connection keeps its
session (no reset round trip), but never an open transaction."""

from __future__ import annotations

from shared.persistence.db import create_pool


async def test_a_released_connection_keeps_its_session_but_not_an_open_transaction(
    database: str,
) -> None:
    pool = await create_pool(database, max_size=1)  # one connection: the same one comes back
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE left_open (id int)")
        async with pool.acquire() as conn:
            # asyncpg's default reset would have sent RESET ALL: the name would be gone.
            assert await conn.fetchval("SHOW application_name") == "kept"
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()
