"""Counting the statements a unit of work sends, for tests that hold a code path to its
round trips (the count is the regression metric of ``make bench``; see docs/benchmark.md)."""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg

from shared.persistence.postgres import PostgresUnitOfWork


class CountingConnection:
    """A connection that counts the statements sent through it: hand it (cast) to an
    adapter in place of its connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements = 0

    async def fetch(self, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self._conn.fetch(*args)

    async def fetchrow(self, *args: Any) -> asyncpg.Record | None:
        self.statements += 1
        return await self._conn.fetchrow(*args)

    async def fetchval(self, *args: Any) -> Any:
        self.statements += 1
        return await self._conn.fetchval(*args)

    async def execute(self, *args: Any) -> str:
        self.statements += 1
        return await self._conn.execute(*args)


class StatementLog(PostgresUnitOfWork):
    """Mix in before a service's PostgreSQL unit of work (``class Counted(StatementLog,
    PostgresOrderUnitOfWork)``): every statement sent after its BEGIN, COMMIT included, is
    appended to ``sent``. A connection's first use of a statement also sends asyncpg's type
    introspection: warm up with one run before counting."""

    sent: ClassVar[list[str]] = []

    async def _begin(self) -> None:
        await super()._begin()
        self.conn.add_query_logger(self._log)

    def _log(self, record: Any) -> None:
        self.sent.append(record.query)

    async def _release(self) -> None:
        if not self._released:
            self.conn.remove_query_logger(self._log)
        await super()._release()
