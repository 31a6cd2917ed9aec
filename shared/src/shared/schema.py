"""Tables of the event-driven machinery, created by each service's first Alembic migration.

- ``outbox``: events waiting for the relay, written in the business transaction.
- ``outbox_sequences``: the last ``sequence`` given per aggregate (the row lock orders writers).
- ``processed_events``: the dedup row ``(consumer, event_id)`` of every event applied.
- ``consumer_sequences``: the last sequence applied per ``(consumer, source, aggregate)``.
- ``parked_events``: events that arrived ahead of a gap, applied when it fills.
- ``dead_letters``: what the consumer gave up on, with the reason, for ``/admin/dlq``.
"""

from __future__ import annotations

CREATE_SQL = """
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,
    topic         text NOT NULL,
    message_key   text NOT NULL,
    value         bytea NOT NULL,
    headers       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox_sequences (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_processed_at ON processed_events (processed_at);

CREATE TABLE consumer_sequences (
    consumer       text NOT NULL,
    source         text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last_sequence  bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, source, aggregate_type, aggregate_id)
);

CREATE TABLE parked_events (
    consumer       text NOT NULL,
    source         text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    "offset"       bigint NOT NULL,
    value          bytea NOT NULL,
    headers        jsonb NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, source, aggregate_type, aggregate_id, sequence)
);
CREATE INDEX parked_events_parked_at ON parked_events (parked_at);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    message_key bytea,
    value       bytea,
    headers     jsonb NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (consumer, topic, partition, "offset")
);
"""

DROP_SQL = """
DROP TABLE IF EXISTS dead_letters, parked_events, consumer_sequences, processed_events,
    outbox_sequences, outbox;
"""
