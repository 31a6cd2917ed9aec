"""Correlation and causation ids of the work in progress, carried in context variables.

The HTTP middleware sets them from ``X-Correlation-ID`` (or a new id); the consumer sets them
from the envelope it processes. The outbox reads them when it writes an event, and the log
formatter and span processor stamp them on every line and span.
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


def current_correlation_id() -> str:
    """The correlation id in effect, or a new one when nothing set it (background work)."""
    return correlation_id_var.get() or new_id()


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
