"""Base of repositories whose aggregates the unit of work saves at commit."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from shared.domain import Aggregate
from shared.uow import UnitOfWork

A = TypeVar("A", bound=Aggregate)


class TrackingRepository(ABC, Generic[A]):
    """Every aggregate handed out or added is tracked; at commit, the unit of work calls
    ``persist``, which saves those that recorded events (that is, changed), just before
    their events are drained into the outbox in the same transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self._tracked: dict[str, A] = {}

    def track(self, aggregate: A) -> A:
        self._tracked[aggregate.aggregate_id] = aggregate
        self._uow.track(aggregate)
        return aggregate

    async def persist(self) -> None:
        for aggregate in self._tracked.values():
            if aggregate.events:
                await self._save(aggregate)

    @abstractmethod
    async def _save(self, aggregate: A) -> None: ...
