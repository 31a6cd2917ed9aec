"""Base of repositories whose aggregates the unit of work saves at commit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from shared.writing.aggregate import Aggregate
from shared.writing.uow import UnitOfWork

A = TypeVar("A", bound=Aggregate)


class TrackingRepository(ABC, Generic[A]):
    """Every aggregate handed out or added is tracked; at commit, the unit of work calls
    ``persist``, which inserts the added ones and saves those that recorded events (that
    is, changed), each kind in one call however many there are, in the same transaction as
    their events.

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

    def in_hand(self, aggregate_id: str) -> bool:
        """Whether this transaction has looked this aggregate up already (found or not):
        ``held`` then answers without a round trip."""
        return aggregate_id in self._tracked or aggregate_id in self._absent

    def held(self, aggregate_id: str) -> A | None:
        return self._tracked.get(aggregate_id)

    def loaded(self, wanted: Iterable[str], found: Iterable[A]) -> list[A]:
        """Track what a lookup of ``wanted`` found and remember the rest as absent; what
        was found, each as the object the transaction holds."""
        tracked = [self.held(a.aggregate_id) or self.track(a) for a in found]
        self._absent.update(set(wanted) - {a.aggregate_id for a in tracked})
        return tracked

    async def persist(self) -> None:
        added = [a for i, a in self._tracked.items() if i in self._added]
        changed = [
            a for i, a in self._tracked.items() if i not in self._added and self._uow.changed(a)
        ]
        self._added.clear()
        if added:
            await self._insert_all(added)
        if changed:
            await self._save_all(changed)

    async def _insert_all(self, aggregates: Sequence[A]) -> None:
        """Store new aggregates; by default one at a time (adapters write them in one
        statement)."""
        for aggregate in aggregates:
            await self._insert(aggregate)

    async def _save_all(self, aggregates: Sequence[A]) -> None:
        """Save changed aggregates; by default one at a time (adapters write them in one
        statement)."""
        for aggregate in aggregates:
            await self._save(aggregate)

    async def _insert(self, aggregate: A) -> None:
        """Store a new aggregate; by default the same as saving (an upsert)."""
        await self._save(aggregate)

    @abstractmethod
    async def _save(self, aggregate: A) -> None: ...
