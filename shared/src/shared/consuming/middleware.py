"""The consumer's per-event middleware, written once: correlation, tracing, metrics, logs.

Each concern is an observer: given a delivery it returns an :class:`EventObservation` that
is active while the event is applied and hears how it ended. The consumer composes them
(:func:`compose`); its own code keeps only fetching, applying, retrying and dead-lettering.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from shared.consuming.processing import Delivery, EventObservation, Observe, Outcome
from shared.contracts.envelope import Envelope
from shared.observability.correlation import causation_id_var, correlation_id_var
from shared.observability.metrics import DEDUP_HITS, EVENTS_CONSUMED, HANDLER_SECONDS
from shared.observability.tracing import context_from_headers, tracer

log = logging.getLogger("shared.consuming.consumer")

Observer = Callable[[Delivery], EventObservation]


class _Composite(EventObservation):
    def __init__(self, delivery: Delivery, parts: list[EventObservation]) -> None:
        self._delivery = delivery
        self._parts = parts

    def active(self) -> _Active:
        return _Active(self._delivery.envelope, self._parts)

    # The end of an event is heard inside its context again (a batch commits after its events
    # were applied), innermost observer first: the log line is written inside the span, which
    # ends last.
    def done(self, outcome: Outcome) -> None:
        with self.active():
            for part in reversed(self._parts):
                part.done(outcome)

    def dead_lettered(self, error: str, attempts: int) -> None:
        with self.active():
            for part in reversed(self._parts):
                part.dead_lettered(error, attempts)

    def undone(self, reason: str) -> None:
        with self.active():
            for part in reversed(self._parts):
                part.undone(reason)


class _Active:
    """The event's correlation and every part's context, entered in order and left in
    reverse: what ``contextlib`` would do, without its generator and exit stack (this runs
    twice per event)."""

    def __init__(self, envelope: Envelope, parts: list[EventObservation]) -> None:
        self._envelope = envelope
        self._parts = parts

    def __enter__(self) -> None:
        envelope = self._envelope
        self._tokens = (
            correlation_id_var.set(envelope.correlation_id),
            causation_id_var.set(str(envelope.event_id)),
        )
        self._entered = [part.active() for part in self._parts]
        for entered in self._entered:
            entered.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for entered in reversed(self._entered):
            entered.__exit__(kind, error, tb)
        correlation_id_var.reset(self._tokens[0])
        causation_id_var.reset(self._tokens[1])


def compose(observers: Sequence[Observer]) -> Observe:
    """One observation per event made of every observer's, inside the event's correlation
    (so every log line and span of its application carries the correlation id)."""

    def observe(delivery: Delivery) -> EventObservation:
        return _Composite(delivery, [observer(delivery) for observer in observers])

    return observe


class _Traced(EventObservation):
    """A CONSUMER span per event, child of the span that published it (W3C trace context
    in the Kafka headers), current while the event is applied."""

    def __init__(self, delivery: Delivery) -> None:
        envelope = delivery.envelope
        self._span: Span = tracer().start_span(
            f"process {envelope.event_type}",
            context=context_from_headers(delivery.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": delivery.topic,
                "messaging.kafka.partition": delivery.partition,
                "messaging.kafka.offset": delivery.offset,
                "correlation_id": envelope.correlation_id,
                "event_id": str(envelope.event_id),
                "event_type": envelope.event_type,
                "aggregate_id": envelope.aggregate_id,
                "event.sequence": envelope.sequence,
            },
        )

    def active(self) -> contextlib.AbstractContextManager[object]:
        return trace.use_span(self._span, end_on_exit=False)

    def done(self, outcome: Outcome) -> None:
        self._span.set_attribute("outcome", outcome.value)
        self._span.end()

    def dead_lettered(self, error: str, attempts: int) -> None:
        self._span.set_attribute("outcome", "dead_lettered")
        self._span.set_attribute("dead_letter.error", error[:500])
        self._span.set_attribute("dead_letter.attempts", attempts)
        self._span.set_status(Status(StatusCode.ERROR, error[:200]))
        self._span.end()

    def undone(self, reason: str) -> None:
        self._span.set_attribute("outcome", "rolled_back")
        self._span.set_attribute("rolled_back.reason", reason[:200])
        self._span.end()


def traced(handles: Callable[[str], bool]) -> Observer:
    """A span for each event of a type the service handles. One it has no handler for only
    moves its stream on: it is counted and logged (at ``DEBUG``), not traced. Such events
    were a third of an order's spans, with nothing to show but that they were passed over."""
    untraced = EventObservation()

    def observe(delivery: Delivery) -> EventObservation:
        return _Traced(delivery) if handles(delivery.envelope.event_type) else untraced

    return observe


class _Measured(EventObservation):
    """Counts each outcome, times each event (its commit included) and logs one line per
    event, with the fields an operator filters on."""

    def __init__(self, service: str, delivery: Delivery) -> None:
        self._service = service
        self._delivery = delivery
        self._started = time.perf_counter()

    def done(self, outcome: Outcome) -> None:
        elapsed = time.perf_counter() - self._started
        topic = self._delivery.topic
        HANDLER_SECONDS.labels(self._service, topic).observe(elapsed)
        EVENTS_CONSUMED.labels(self._service, topic, outcome.value).inc()
        if outcome is Outcome.DUPLICATE:
            DEDUP_HITS.labels(self._service, topic).inc()
        self._log(outcome.value, elapsed)

    def dead_lettered(self, error: str, attempts: int) -> None:
        EVENTS_CONSUMED.labels(self._service, self._delivery.topic, "dead_lettered").inc()
        self._log("dead_lettered", time.perf_counter() - self._started)

    def _log(self, outcome: str, elapsed: float) -> None:
        # Heard inside the event's context (its correlation, its span): see _Composite.
        level = logging.DEBUG if outcome == Outcome.IGNORED else logging.INFO
        if not log.isEnabledFor(level):
            return
        envelope = self._delivery.envelope
        log.log(
            level,
            "%s %s #%d from %s",
            outcome,
            envelope.event_type,
            envelope.sequence,
            envelope.source,
            extra={
                "fields": {
                    "event_id": str(envelope.event_id),
                    "event_type": envelope.event_type,
                    "aggregate_id": envelope.aggregate_id,
                    "sequence": envelope.sequence,
                    "topic": self._delivery.topic,
                    "partition": self._delivery.partition,
                    "offset": self._delivery.offset,
                    "outcome": outcome,
                    "elapsed_ms": round(elapsed * 1000, 2),
                }
            },
        )


def measured(service: str) -> Observer:
    return lambda delivery: _Measured(service, delivery)
