"""Periodic housekeeping of a service's machinery tables."""

from __future__ import annotations

import json

import asyncpg

from shared.deadletter import DeadLetter, DeadLetterSink
from shared.metrics import DLQ_DEPTH, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, PARKED_EVENTS


async def refresh_gauges(pool: asyncpg.Pool, service: str) -> None:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM outbox) AS backlog,
               (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
                  FROM outbox) AS oldest,
               (SELECT count(*) FROM parked_events) AS parked,
               (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dlq
        """
    )
    assert row is not None
    OUTBOX_BACKLOG.labels(service).set(row["backlog"])
    OUTBOX_OLDEST_AGE.labels(service).set(float(row["oldest"]))
    PARKED_EVENTS.labels(service).set(row["parked"])
    DLQ_DEPTH.labels(service).set(row["dlq"])


async def expire_gaps(
    pool: asyncpg.Pool, sink: DeadLetterSink, consumer: str, timeout_seconds: float
) -> int:
    """Dead-letter events parked longer than ``timeout_seconds``: the event they wait for is
    not coming (lost upstream, or itself dead-lettered). Replaying the missing event, then
    these, restores the stream. Returns how many were dead-lettered."""
    rows = await pool.fetch(
        """
        SELECT p.*, s.last_sequence FROM parked_events p
        LEFT JOIN consumer_sequences s USING (consumer, source, aggregate_type, aggregate_id)
        WHERE p.consumer = $1 AND p.parked_at < now() - make_interval(secs => $2)
        ORDER BY p.parked_at
        """,
        consumer,
        timeout_seconds,
    )
    for row in rows:
        expected = (row["last_sequence"] or 0) + 1
        await sink.send(
            DeadLetter(
                consumer,
                row["topic"],
                row["partition"],
                row["offset"],
                row["aggregate_id"].encode(),
                bytes(row["value"]),
                json.loads(row["headers"]),
                f"sequence gap: waited {timeout_seconds:.0f}s for sequence {expected} of "
                f"{row['source']}/{row['aggregate_type']}/{row['aggregate_id']}; "
                f"this is sequence {row['sequence']}",
                1,
            )
        )
        await pool.execute(
            "DELETE FROM parked_events WHERE consumer = $1 AND source = $2"
            " AND aggregate_type = $3 AND aggregate_id = $4 AND sequence = $5",
            consumer,
            row["source"],
            row["aggregate_type"],
            row["aggregate_id"],
            row["sequence"],
        )
    return len(rows)


async def purge_processed_events(pool: asyncpg.Pool, consumer: str, retention_hours: float) -> int:
    """Delete dedup rows older than the topic retention: Kafka can no longer redeliver
    those events, so remembering them protects nothing. Returns how many were deleted."""
    result: str = await pool.execute(
        "DELETE FROM processed_events WHERE consumer = $1"
        " AND processed_at < now() - make_interval(secs => $2)",
        consumer,
        retention_hours * 3600.0,
    )
    return int(result.rsplit(maxsplit=1)[-1])
