"""The unit of work: one database transaction that holds the business change, the events it
caused (outbox) and, in a consumer, the record of the event being applied (inbox).

Handlers never commit events any other way: ``commit()`` drains the events recorded by the
aggregates the unit of work tracked (integration events into the outbox, the integration
events that domain events are published as into the debounce hold), then commits. The PostgreSQL
implementation is :class:`shared.persistence.postgres.PostgresUnitOfWork`; the in-memory fake for
unit tests is :class:`shared.testing.fakes.InMemoryUnitOfWork`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from shared.consuming.inbox import Inbox
from shared.contracts import IntegrationEvent
from shared.writing.aggregate import Aggregate, DomainEvent
from shared.writing.outbox import Outbox
from shared.writing.pending import PendingEvents
from shared.writing.storm import FanOutGuard


class Coarse(Protocol):
    """Where the integration event that a domain event is published as goes; returns how
    many events it put in the outbox now."""

    async def __call__(
        self, uow: UnitOfWork, event: IntegrationEvent, aggregate_id: str
    ) -> int: ...


async def debounced(uow: UnitOfWork, event: IntegrationEvent, aggregate_id: str) -> int:
    """Held, merged with the aggregate's next changes, emitted once it goes quiet (see
    :mod:`shared.writing.debounce`)."""
    await uow.pending.hold(event, aggregate_id=aggregate_id)
    return 0


class UnitOfWork(ABC):
    outbox: Outbox
    inbox: Inbox
    pending: PendingEvents

    def __init__(self, *, coarse: Coarse = debounced, fanout: FanOutGuard | None = None) -> None:
        # By identity (id()): the aggregates tracked, in order; those created in this
        # transaction (no event stream yet); those that recorded events (saved at commit).
        self._tracked: dict[int, Aggregate] = {}
        self._new: set[int] = set()
        self._changed: set[int] = set()
        self._after_commit: list[Callable[[], None]] = []
        self._committed = False
        self._coarse = coarse
        self._fanout = fanout

    def track(self, aggregate: Aggregate, *, new: bool = False) -> None:
        """Repositories call this for every aggregate they hand out, and with ``new`` for
        every one they add."""
        self._tracked.setdefault(id(aggregate), aggregate)
        if new:
            self._new.add(id(aggregate))

    def changed(self, aggregate: Aggregate) -> bool:
        """Whether ``aggregate`` recorded events in this transaction: it is saved at commit."""
        return id(aggregate) in self._changed

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

    async def flush(self) -> None:
        """Drain the recorded events into the outbox (and the debounce hold), noting which
        aggregates changed, without a round trip: a consumer applying several events in one
        transaction flushes after each, so each event's outbox rows carry its own
        correlation and trace context. The aggregates are saved at commit, once each
        however many events changed them; the next event of the batch finds them in its
        repository, which hands out each aggregate once per transaction."""
        emitted = 0
        for aggregate in self._tracked.values():
            if aggregate.events:
                self._changed.add(id(aggregate))
            new = id(aggregate) in self._new
            for recorded in aggregate.events:
                event = recorded.published_as() if isinstance(recorded, DomainEvent) else recorded
                if event is None:
                    continue  # a domain event that stays inside
                if event is not recorded:
                    emitted += await self._coarse(self, event, aggregate.aggregate_id)
                    continue
                await self.outbox.append(
                    event, aggregate_id=aggregate.aggregate_id, new_aggregate=new
                )
                emitted += 1
            aggregate.events.clear()
        if self._fanout is not None:
            self._fanout.observe(emitted)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed (never if it rolls back): to
        tell something in this process about a change it may act on now, such as a
        shipment due at once."""
        self._after_commit.append(callback)

    async def commit(self) -> None:
        await self.flush()
        await self._persist()  # each repository saves what changed in one statement
        await self.pending.write()  # every hold of the transaction, merged: one statement
        await self.outbox.write()  # every event of the transaction: one statement, mostly
        await self._commit()
        self._committed = True
        for callback in self._after_commit:
            callback()

    async def _persist(self) -> None:
        """Save the aggregates added and changed; services' units of work override it."""

    @abstractmethod
    async def _begin(self) -> None: ...

    @abstractmethod
    async def _commit(self) -> None: ...

    @abstractmethod
    async def _rollback(self) -> None: ...
