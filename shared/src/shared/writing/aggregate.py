"""The pure base of every aggregate: it records the events that happened, domain and
integration.

No I/O here: domains import this module, never asyncpg, aiokafka or FastAPI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from shared.contracts import IntegrationEvent


class DomainError(Exception):
    """A business rule refused the command; the message says which rule and why.

    Over HTTP it answers 409; in a consumer it is permanent (no retry changes a rule), so
    the event is dead-lettered at once."""


class NotFoundError(Exception):
    """The command or event names an aggregate this service does not have.

    Over HTTP it answers 404; in a consumer it is permanent, like a :class:`DomainError`
    (the event refers to something that does not exist here: retrying cannot create it)."""


class ConcurrencyError(Exception):
    """The aggregate changed under us between load and save: the whole unit of work may be
    retried (a consumer does, as for any transient failure)."""


class DomainEvent(BaseModel):
    """A fact inside one service (every address edit, every stock movement): it may be
    chatty, and it never crosses Kafka by itself. It is not an
    :class:`~shared.contracts.IntegrationEvent`, so the outbox refuses it."""

    model_config = ConfigDict(frozen=True)

    def published_as(self) -> IntegrationEvent | None:
        """The coarse integration event this fact becomes, debounced (see
        :mod:`shared.writing.debounce`): of a burst of changes to one aggregate, only the last one's
        goes out, once the aggregate is quiet. None (the default): it stays inside."""
        return None


Event = IntegrationEvent | DomainEvent


class Aggregate:
    """An aggregate records what happened in ``events``; the unit of work drains the
    integration events into the outbox in the same transaction as the aggregate's own
    change, and keeps domain events inside the service."""

    aggregate_id: str

    def __init__(self) -> None:
        self.events: list[Event] = []

    def record(self, event: Event) -> None:
        self.events.append(event)
