"""Debounced events: the durable pending state of :mod:`shared.writing.debounce`.

One row per ``(aggregate_type, aggregate_id, event_type)`` holds the latest version of an
integration event that waits for its aggregate to go quiet: a burst of changes rewrites the
row (the last one wins) and the emitter turns it into one outbox row once ``last_at`` is a
quiet period old, or ``first_at`` a maximum wait old. No sequence is stored: the event takes
its sequence when it is emitted, so per-aggregate order holds.
"""

from __future__ import annotations

from shared.persistence.machinery_migrations._step import Step

MACHINERY_0004 = Step(
    name="0004_debounced_events",
    upgrade="""
CREATE TABLE debounced_events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        jsonb       NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   text,
    trace_headers  jsonb       NOT NULL,
    changes        bigint      NOT NULL DEFAULT 1,
    first_at       timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, event_type)
);
CREATE INDEX debounced_events_last_at ON debounced_events (last_at);
CREATE INDEX debounced_events_first_at ON debounced_events (first_at);
""",
    downgrade="""
DROP TABLE debounced_events;
""",
)
