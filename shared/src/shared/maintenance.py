"""Periodic housekeeping of a service's machinery tables."""

from __future__ import annotations

import json
from typing import cast

import asyncpg

from shared.deadletter import DeadLetter, DeadLetterSink
from shared.metrics import DLQ_DEPTH, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, PARKED_EVENTS
from shared.postgres import PostgresInbox


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
    not coming (lost upstream, or itself dead-lettered), or they failed once it came.
    Replaying the missing event, then these, restores the stream. Returns how many.

    Each one is taken in a transaction that holds its stream's row lock, the lock the
    consumer takes too, and deleted only if still parked: an event the consumer applies
    meanwhile is never also dead-lettered, and one being dead-lettered is never applied."""
    candidates = await pool.fetch(
        """
        SELECT source, aggregate_type, aggregate_id, sequence FROM parked_events
        WHERE consumer = $1 AND parked_at < now() - make_interval(secs => $2)
        ORDER BY parked_at
        """,
        consumer,
        timeout_seconds,
    )
    expired = 0
    for candidate in candidates:
        stream = (candidate["source"], candidate["aggregate_type"], candidate["aggregate_id"])
        async with pool.acquire() as conn, conn.transaction():
            inbox = PostgresInbox(cast(asyncpg.Connection, conn), consumer)
            # Locks the stream, as the consumer does.
            last = (await inbox.lock_stream(stream)).last_sequence
            row = await conn.fetchrow(
                """
                DELETE FROM parked_events
                WHERE consumer = $1 AND source = $2 AND aggregate_type = $3
                  AND aggregate_id = $4 AND sequence = $5
                RETURNING *
                """,
                consumer,
                *stream,
                candidate["sequence"],
            )
            if row is None:
                continue  # applied since we looked
            await sink.send(_gap_letter(consumer, row, last, timeout_seconds))
            expired += 1
    return expired


def _gap_letter(
    consumer: str, row: asyncpg.Record, last: int, timeout_seconds: float
) -> DeadLetter:
    where = f"{row['source']}/{row['aggregate_type']}/{row['aggregate_id']}"
    if row["sequence"] == last + 1:
        reason = (
            f"parked sequence {row['sequence']} of {where} could not be applied after its gap "
            "filled (the consumer's log has the error)"
        )
    else:
        reason = (
            f"sequence gap: waited {timeout_seconds:.0f}s for sequence {last + 1} of {where}; "
            f"this is sequence {row['sequence']}"
        )
    return DeadLetter(
        consumer,
        row["topic"],
        row["partition"],
        row["offset"],
        row["aggregate_id"].encode(),
        bytes(row["value"]),
        json.loads(row["headers"]),
        reason,
        1,
    )


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
