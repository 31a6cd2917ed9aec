"""The holding side of debounce (see :mod:`shared.writing.debounce`): integration events that wait
for their aggregate to go quiet, held within the caller's transaction.

``hold`` only takes note, merging the holds of the transaction per aggregate and event type
(a consumer applying a batch may change one aggregate several times); ``write``, which the
unit of work calls just before it commits, stores them all in one round trip, however many
there are, and the held rows stay locked only for the end of the transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import propagate

from shared.contracts import IntegrationEvent, spec_of
from shared.observability.correlation import current_causation_id, current_correlation_id
from shared.observability.metrics import DEBOUNCE_HELD


@dataclass(frozen=True)
class HeldEvent:
    """An integration event waiting for its aggregate to go quiet, with the context of the
    change that last rewrote it."""

    event: IntegrationEvent
    aggregate_id: str
    correlation_id: str
    causation_id: str | None
    trace_headers: dict[str, str]


def held(event: IntegrationEvent, aggregate_id: str) -> HeldEvent:
    """``event`` as held now: with the correlation and trace context in effect."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return HeldEvent(event, aggregate_id, current_correlation_id(), current_causation_id(), headers)


HeldKey = tuple[str, str, str]  # (aggregate_type, aggregate_id, event_type)


class PendingEvents(ABC):
    """Port: holds debounced events within the caller's transaction. ``hold`` replaces what
    is held for the same aggregate and event type (the last change wins, with its context),
    counts the changes it stands for and keeps the time of the first change of the burst.

    Adapters implement ``_store`` (merge the transaction's holds, each with the number of
    changes it stands for, into what is held, the changes added up) and ``waiting``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._held: dict[HeldKey, tuple[HeldEvent, int]] = {}

    async def hold(self, event: IntegrationEvent, *, aggregate_id: str) -> None:
        spec = spec_of(event)
        key = (spec.aggregate_type, aggregate_id, spec.event_type)
        _, changes = self._held.get(key, (None, 0))
        self._held[key] = (held(event, aggregate_id), changes + 1)
        DEBOUNCE_HELD.labels(self.source, spec.event_type).inc()

    async def write(self) -> None:
        """Store what this transaction held (the unit of work calls it before it commits)."""
        holds, self._held = self._held, {}
        if holds:
            await self._store(holds)

    @abstractmethod
    async def waiting(self) -> list[tuple[HeldEvent, int]]:
        """What is held (stored), each with the number of changes it stands for, oldest
        burst first."""

    @abstractmethod
    async def _store(self, holds: Mapping[HeldKey, tuple[HeldEvent, int]]) -> None: ...
