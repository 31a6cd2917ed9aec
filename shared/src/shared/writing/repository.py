"""Base of repositories whose aggregates the unit of work saves at commit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar
from uuid import UUID

from shared.writing.aggregate import Aggregate
from shared.writing.uow import UnitOfWork

A = TypeVar("A", bound=Aggregate)
K = TypeVar("K", str, UUID)  # what an aggregate is looked up by; its aggregate_id is str(key)


class TrackingRepository(ABC, Generic[K, A]):
    """Every aggregate handed out or added is tracked; at commit, the unit of work calls
    ``persist``, which inserts the added ones and saves those that recorded events (that
    is, changed), all in one call, in the same transaction as their events.

    The repository is the transaction's identity map: an aggregate is loaded once, and every
    later ``get`` of it in the transaction hands out the same object, changes and all. So a
    consumer applying a batch of events loads the batch's aggregates up front, all in one
    statement (``load_all`` in a service's batch preparer, see
    :mod:`shared.consuming.routing`), its handlers then read nothing, and each changed
    aggregate is written once at commit, however many of the batch's events changed it."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._tracked: dict[str, A] = {}
        self._added: set[str] = set()
        self._absent: set[str] = set()  # looked for in this transaction, not found

    def track(self, aggregate: A) -> A:
        """An aggregate loaded from storage: saved at commit if it changed."""
        self._tracked[aggregate.aggregate_id] = aggregate
        self._uow.track(aggregate)
        return aggregate

    def add(self, aggregate: A) -> A:
        """A new aggregate: inserted at commit."""
        self._added.add(aggregate.aggregate_id)
        self._absent.discard(aggregate.aggregate_id)
        self.track(aggregate)
        self._uow.track(aggregate, new=True)
        return aggregate

    async def get(self, key: K) -> A | None:
        """The aggregate, locked until commit and saved at commit if it changed; the same
        object for every ``get`` in the transaction, loaded by the first."""
        await self.load_all([key])
        return self._tracked.get(str(key))

    async def load_all(self, keys: Iterable[K]) -> list[A]:
        """Load and lock, in one round trip and in key order (so two transactions never
        deadlock), the aggregates this transaction does not hold yet; those found among
        ``keys``, as the transaction holds them."""
        keys = list(keys)
        wanted = sorted({k for k in keys if not self._in_hand(str(k))})
        if wanted:
            for aggregate in await self._lock_all(wanted):
                self.track(aggregate)
            self._absent.update(str(k) for k in wanted if str(k) not in self._tracked)
        return [a for k in dict.fromkeys(keys) if (a := self._tracked.get(str(k))) is not None]

    def _in_hand(self, aggregate_id: str) -> bool:
        """Looked up in this transaction already, found or not: no round trip needed."""
        return aggregate_id in self._tracked or aggregate_id in self._absent

    async def persist(self) -> None:
        """Write what the transaction added and changed (the unit of work calls it at
        commit)."""
        added = [a for i, a in self._tracked.items() if i in self._added]
        changed = [
            a for i, a in self._tracked.items() if i not in self._added and self._uow.changed(a)
        ]
        self._added.clear()
        if added or changed:
            await self._write(added, changed)

    @abstractmethod
    async def _lock_all(self, keys: Sequence[K]) -> list[A]:
        """The aggregates found, locked until commit in the order of ``keys`` (sorted)."""

    @abstractmethod
    async def _write(self, added: Sequence[A], changed: Sequence[A]) -> None:
        """Insert the new aggregates and save the changed ones: in one statement, or one
        per kind, however many there are."""
