"""Correlation and causation ids of the work in progress, carried in context variables.

This is the one source of both ids. The edges set them: the HTTP middleware from
``X-Correlation-ID`` (or a new id), the consumer from the envelope it processes, a background
job from the aggregate it works on (``with correlated(...)``). Everything downstream reads
them: an aggregate that stores its flow's id, the outbox when it stamps an event, the log
formatter and the span processor. Writing an event with no correlation in effect is a bug
at an edge, and raises :class:`NoCorrelationError` rather than inventing an id that nothing
else would share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import uuid4

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
causation_id_var: ContextVar[str | None] = ContextVar("causation_id", default=None)


def new_id() -> str:
    return str(uuid4())


class NoCorrelationError(RuntimeError):
    """Work that writes events ran outside ``correlated(...)``."""


def current_correlation_id() -> str:
    """The correlation id in effect; raises NoCorrelationError when no edge set one."""
    correlation_id = correlation_id_var.get()
    if correlation_id is None:
        raise NoCorrelationError(
            "no correlation id in effect: run this work inside "
            "shared.observability.correlation.correlated()"
        )
    return correlation_id


def current_causation_id() -> str | None:
    return causation_id_var.get()


@contextmanager
def correlated(correlation_id: str, causation_id: str | None) -> Iterator[None]:
    corr = correlation_id_var.set(correlation_id)
    cause = causation_id_var.set(causation_id)
    try:
        yield
    finally:
        correlation_id_var.reset(corr)
        causation_id_var.reset(cause)
