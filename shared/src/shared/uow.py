"""The unit of work: one database transaction that holds the business change, the events it
caused (outbox) and, in a consumer, the record of the event being applied (inbox).

Handlers never commit events any other way: ``commit()`` drains the events recorded by the
aggregates the unit of work tracked into the outbox, then commits.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, cast

import asyncpg

from shared.domain import Aggregate
from shared.faults import failpoint
from shared.inbox import Inbox, InMemoryInbox, InMemoryInboxState, PostgresInbox
from shared.outbox import (
    InMemoryOutbox,
    InMemoryOutboxState,
    Outbox,
    OutgoingMessage,
    PostgresOutbox,
    notify_channel,
)

DirectPublish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]


class UnitOfWork(ABC):
    outbox: Outbox
    inbox: Inbox

    def __init__(self) -> None:
        self._tracked: list[Aggregate] = []
        self._committed = False

    def track(self, aggregate: Aggregate) -> None:
        """Repositories call this for every aggregate they hand out or add."""
        if all(a is not aggregate for a in self._tracked):
            self._tracked.append(aggregate)

    async def __aenter__(self) -> Self:
        await self._begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            await self._rollback()

    async def commit(self) -> None:
        await self._persist()
        for aggregate in self._tracked:
            for event in aggregate.events:
                await self.outbox.append(event, aggregate_id=aggregate.aggregate_id)
            aggregate.events.clear()
        await self._commit()
        self._committed = True

    async def _persist(self) -> None:
        """Save the tracked aggregates that changed; services' units of work override it."""

    @abstractmethod
    async def _begin(self) -> None: ...

    @abstractmethod
    async def _commit(self) -> None: ...

    @abstractmethod
    async def _rollback(self) -> None: ...


class PostgresUnitOfWork(UnitOfWork):
    """A pooled connection in a transaction. Subclasses build their repositories on
    ``self.conn`` in ``_begin``. With ``direct_publish`` (the naive dual-write pitfall mode)
    events skip the outbox and are published straight after commit."""

    conn: asyncpg.Connection

    def __init__(
        self, pool: asyncpg.Pool, source: str, direct_publish: DirectPublish | None = None
    ) -> None:
        super().__init__()
        self._pool = pool
        self._source = source
        self._direct_publish = direct_publish

    async def _begin(self) -> None:
        self._proxy = await self._pool.acquire()
        self.conn = cast(asyncpg.Connection, self._proxy)
        self._released = False
        self._tx = self.conn.transaction()
        try:
            await self._tx.start()
        except BaseException:
            await self._release()
            raise
        self.outbox = PostgresOutbox(
            self.conn, self._source, direct=self._direct_publish is not None
        )
        self.inbox = PostgresInbox(self.conn, self._source)

    async def _commit(self) -> None:
        try:
            if isinstance(self.outbox, PostgresOutbox) and self.outbox.written:
                # Delivered at commit: wakes the relay without waiting for its poll.
                await self.conn.execute("SELECT pg_notify($1, '')", notify_channel(self._source))
            await self._tx.commit()
        finally:
            await self._release()
        await failpoint("uow.after_commit")
        if self._direct_publish is not None and isinstance(self.outbox, PostgresOutbox):
            # Pitfall: a crash here, or a broker that is down, loses these events for good.
            await self._direct_publish(self.outbox.direct_messages)

    async def _rollback(self) -> None:
        if self._released:
            return
        try:
            await self._tx.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone; so is the transaction
        finally:
            await self._release()

    async def _release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool.release(self._proxy)


@dataclass
class InMemoryState:
    """Everything a fake unit of work persists; ``tables`` holds the service's aggregates."""

    outbox: InMemoryOutboxState = field(default_factory=InMemoryOutboxState)
    inbox: InMemoryInboxState = field(default_factory=InMemoryInboxState)
    tables: dict[str, dict[Any, Any]] = field(default_factory=dict)


class InMemoryUnitOfWork(UnitOfWork):
    """Works on a copy of the state and writes it back on commit, so a rollback (an exception
    in a handler) leaves nothing behind, as a real transaction would."""

    def __init__(self, state: InMemoryState, source: str) -> None:
        super().__init__()
        self.state = state
        self._source = source

    async def _begin(self) -> None:
        self.working = copy.deepcopy(self.state)
        self.outbox = InMemoryOutbox(self.working.outbox, self._source)
        self.inbox = InMemoryInbox(self.working.inbox)

    def table(self, name: str) -> dict[Any, Any]:
        return self.working.tables.setdefault(name, {})

    async def _commit(self) -> None:
        self.state.outbox = self.working.outbox
        self.state.inbox = self.working.inbox
        self.state.tables = self.working.tables

    async def _rollback(self) -> None:
        return None
