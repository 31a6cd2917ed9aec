"""Base of repositories whose aggregates the unit of work saves at commit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from shared.writing.aggregate import Aggregate
from shared.writing.uow import UnitOfWork

A = TypeVar("A", bound=Aggregate)


class TrackingRepository(ABC, Generic[A]):
    """Every aggregate handed out or added is tracked; at commit, the unit of work calls
    ``persist``, which inserts the added ones and saves those that recorded events (that
    is, changed), just before their events are drained into the outbox in the same
    transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._tracked: dict[str, A] = {}
        self._added: set[str] = set()

    def track(self, aggregate: A) -> A:
        """An aggregate loaded from storage: saved at commit if it changed."""
        self._tracked[aggregate.aggregate_id] = aggregate
        self._uow.track(aggregate)
        return aggregate

    def add(self, aggregate: A) -> A:
        """A new aggregate: inserted at commit."""
        self._added.add(aggregate.aggregate_id)
        return self.track(aggregate)

    async def persist(self) -> None:
        for aggregate_id, aggregate in self._tracked.items():
            if aggregate_id in self._added:
                await self._insert(aggregate)
            elif aggregate.events:
                await self._save(aggregate)
        self._added.clear()

    async def _insert(self, aggregate: A) -> None:
        """Store a new aggregate; by default the same as saving (an upsert)."""
        await self._save(aggregate)

    @abstractmethod
    async def _save(self, aggregate: A) -> None: ...
