"""The pure base of every aggregate: it records the integration events that happened.

No I/O here: domains import this module, never asyncpg, aiokafka or FastAPI.
"""

from __future__ import annotations

from shared.contracts import Payload


class DomainError(Exception):
    """A business rule refused the command; the message says which rule and why."""


class Aggregate:
    """An aggregate records what happened in ``events``; the unit of work drains them into
    the outbox in the same transaction as the aggregate's own change."""

    aggregate_id: str

    def __init__(self) -> None:
        self.events: list[Payload] = []

    def record(self, event: Payload) -> None:
        self.events.append(event)
