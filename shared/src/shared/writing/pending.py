"""The holding side of debounce (see :mod:`shared.writing.debounce`): integration events that wait
for their aggregate to go quiet, held within the caller's transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
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


class PendingEvents(ABC):
    """Port: holds debounced events within the caller's transaction. ``hold`` replaces what
    is held for the same aggregate and event type (the last change wins) and keeps the time
    of the first change of the burst."""

    def __init__(self, source: str) -> None:
        self.source = source

    async def hold(self, event: IntegrationEvent, *, aggregate_id: str) -> None:
        await self._hold(held(event, aggregate_id))
        DEBOUNCE_HELD.labels(self.source, spec_of(event).event_type).inc()

    @abstractmethod
    async def waiting(self) -> list[tuple[HeldEvent, int]]:
        """What is held, each with the number of changes it stands for, oldest burst first."""

    @abstractmethod
    async def _hold(self, event: HeldEvent) -> None: ...
