"""The storm guard: how many integration events one incoming request or event caused.

Every unit-of-work flush is the work of one cause (an HTTP request, a consumed event, a
dispatcher tick); the integration events it wrote to the outbox are its fan-out, observed
in ``integration_events_per_cause``. Past ``STORM_FANOUT_WARN_THRESHOLD`` a warning names
the correlation id, so the flow that stormed can be found in the logs, traces and the
event-flow view. Debounced events are held, not written, so they do not count: a burst of
address edits is a fan-out of 0 per request, and the pitfall mode ``PITFALL_NO_DEBOUNCE``
shows 1 per request (1,000 requests, 1,000 events).
"""

from __future__ import annotations

import logging

from shared.correlation import causation_id_var, correlation_id_var
from shared.metrics import EVENTS_PER_CAUSE, FANOUT_WARNINGS

log = logging.getLogger(__name__)


def current_cause() -> str:
    """What the work in effect is answering, from its causation id: ``http`` (a request),
    ``timer`` (a scheduled job such as the dispatcher), ``event`` (a consumed event, whose
    id is the causation id) or ``background``."""
    causation = causation_id_var.get()
    if causation is None:
        return "background"
    if causation.startswith("request:"):
        return "http"
    if causation.startswith("dispatch:"):
        return "timer"
    return "event"


class FanOutGuard:
    """Observes each flush's fan-out; warns past ``threshold`` (0: never)."""

    def __init__(self, service: str, threshold: int) -> None:
        self._service = service
        self._threshold = threshold

    def observe(self, emitted: int) -> None:
        cause = current_cause()
        EVENTS_PER_CAUSE.labels(self._service, cause).observe(emitted)
        if self._threshold and emitted > self._threshold:
            FANOUT_WARNINGS.labels(self._service, cause).inc()
            log.warning(
                "storm guard: one %s caused %d integration events (threshold %d);"
                " correlation_id=%s causation_id=%s",
                cause,
                emitted,
                self._threshold,
                correlation_id_var.get(),
                causation_id_var.get(),
            )
