"""Domain events stay inside a service; only integration events reach the outbox."""

from __future__ import annotations

from uuid import uuid4

import pytest

from shared.contracts import IntegrationEvent, Payload, integration_event
from shared.contracts.catalog import OrderRejected
from shared.testing.fakes import InMemoryState, InMemoryUnitOfWork
from shared.writing.aggregate import Aggregate, DomainEvent


class NoteEdited(DomainEvent):
    text: str


class Note(Aggregate):
    def __init__(self, aggregate_id: str) -> None:
        super().__init__()
        self.aggregate_id = aggregate_id


async def test_the_outbox_refuses_a_domain_event() -> None:
    async with InMemoryUnitOfWork(InMemoryState(), "test") as uow:
        with pytest.raises(TypeError, match="not an integration event"):
            # mypy --strict refuses this line too: were the ignore unneeded, it would say so.
            await uow.outbox.append(NoteEdited(text="x"), aggregate_id="n1")  # type: ignore[arg-type]


async def test_a_domain_event_stays_inside_and_an_integration_event_goes_out() -> None:
    state = InMemoryState()
    async with InMemoryUnitOfWork(state, "test") as uow:
        note = Note("n1")
        note.record(NoteEdited(text="draft"))
        note.record(OrderRejected(order_id=uuid4(), reason="r"))
        uow.track(note)
        await uow.commit()
    assert [e.event_type for e in state.outbox.envelopes] == ["OrderRejected"]


def test_only_an_integration_event_can_be_registered_as_one() -> None:
    class NotAnEvent(Payload):
        pass

    register = integration_event(topic="orders", aggregate_type="order")
    with pytest.raises(TypeError, match="must subclass IntegrationEvent"):
        register(NotAnEvent)  # type: ignore[type-var]

    assert issubclass(OrderRejected, IntegrationEvent)
