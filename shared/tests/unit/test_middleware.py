"""How the per-event middleware composes: the end of an event is heard inside its context,
and only the events the service handles are traced."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from uuid import uuid4

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.consuming import middleware
from shared.consuming.middleware import compose
from shared.consuming.processing import Delivery, EventObservation, Outcome
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import new_envelope
from shared.observability.correlation import current_correlation_id

span = contextvars.ContextVar[str | None]("span", default=None)


class Outer(EventObservation):
    """Plays the tracer: a context current while active, ended when the event ends."""

    def __init__(self, heard: list[str]) -> None:
        self.heard = heard

    @contextlib.contextmanager
    def active(self) -> Iterator[object]:
        token = span.set("the event's span")
        try:
            yield self
        finally:
            span.reset(token)

    def done(self, outcome: Outcome) -> None:
        self.heard.append("span ended")


class Inner(EventObservation):
    """Plays the log line: written when the event ends, wanting the span and correlation."""

    def __init__(self, heard: list[str]) -> None:
        self.heard = heard

    def done(self, outcome: Outcome) -> None:
        self.heard.append(f"logged in {span.get()} of {current_correlation_id()}")

    def dead_lettered(self, error: str, attempts: int) -> None:
        self.done(Outcome.APPLIED)

    def undone(self, reason: str) -> None:
        self.done(Outcome.APPLIED)


def delivery() -> Delivery:
    event = OrderRejected(order_id=uuid4(), reason="r")
    envelope = new_envelope(
        event, source="order", aggregate_id="a", sequence=1, correlation_id="flow-7",
        causation_id=None,
    )  # fmt: skip
    return Delivery(envelope)


def test_an_event_that_ends_after_its_batch_commits_is_logged_inside_its_span() -> None:
    heard: list[str] = []
    observe = compose([lambda _: Outer(heard), lambda _: Inner(heard)])
    observation = observe(delivery())
    with observation.active():
        pass  # the event is applied; its batch commits later, outside this block
    observation.done(Outcome.APPLIED)
    assert heard == ["logged in the event's span of flow-7", "span ended"]


@pytest.mark.parametrize("end", ["dead_lettered", "undone"])
def test_dead_letters_and_rollbacks_are_heard_inside_the_span_too(end: str) -> None:
    heard: list[str] = []
    observation = compose([lambda _: Outer(heard), lambda _: Inner(heard)])(delivery())
    if end == "dead_lettered":
        observation.dead_lettered("boom", 3)
    else:
        observation.undone("rolled back")
    assert heard == ["logged in the event's span of flow-7"]


def test_only_the_events_the_service_handles_are_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    monkeypatch.setattr(middleware, "tracer", lambda: provider.get_tracer("test"))
    observe = compose([middleware.traced(lambda event_type: event_type == "OrderRejected")])
    handled = delivery()
    passed_over = Delivery(handled.envelope.model_copy(update={"event_type": "OrderShipped"}))
    for each in (handled, passed_over):
        observation = observe(each)
        with observation.active():
            pass
        observation.done(Outcome.APPLIED)
    assert [span.name for span in exported.get_finished_spans()] == ["process OrderRejected"]
