"""Periodic housekeeping of a service's machinery tables."""

from __future__ import annotations

import json
from typing import cast

import asyncpg

from shared.deadletter import DeadLetter, DeadLetterSink
from shared.metrics import (
    DEBOUNCE_PENDING,
    DLQ_DEPTH,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    PARKED_EVENTS,
)
from shared.postgres import PostgresInbox


async def refresh_gauges(pool: asyncpg.Pool, service: str) -> None:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM outbox) AS backlog,
               (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
                  FROM outbox) AS oldest,
               (SELECT count(*) FROM parked_events) AS parked,
               (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dlq,
               (SELECT count(*) FROM debounced_events) AS debounced
        """
    )
    assert row is not None
    OUTBOX_BACKLOG.labels(service).set(row["backlog"])
    OUTBOX_OLDEST_AGE.labels(service).set(float(row["oldest"]))
    PARKED_EVENTS.labels(service).set(row["parked"])
    DLQ_DEPTH.labels(service).set(row["dlq"])
    DEBOUNCE_PENDING.labels(service).set(row["debounced"])


# A parked event whose missing predecessor (the stream's next sequence, ``last + 1``) is
# itself a dead letter waits for that letter to be replayed, and for a gap timeout after its
# replay (the replayed record goes through the relay and the consumer first): dead-lettering
# it too would only leave one more letter to replay, in the right order. ``p`` is the parked
# row, ``$1`` the consumer, ``$2`` the timeout in seconds.
_PREDECESSOR_IS_A_LETTER = """
    EXISTS (
        SELECT 1 FROM dead_letters d
        WHERE d.consumer = $1 AND d.source = p.source AND d.aggregate_type = p.aggregate_type
          AND d.aggregate_id = p.aggregate_id
          AND d.sequence = {last} + 1
          AND (d.replayed_at IS NULL OR d.replayed_at > now() - make_interval(secs => $2))
    )
"""


async def expire_gaps(
    pool: asyncpg.Pool, sink: DeadLetterSink, consumer: str, timeout_seconds: float
) -> int:
    """Dead-letter events parked longer than ``timeout_seconds``: the event they wait for is
    not coming (lost upstream), or they failed once it came. Replaying the missing event,
    then these, restores the stream. Returns how many.

    An event whose missing predecessor is a pending dead letter is left parked: the stream
    waits for that letter's replay (``POST /admin/dlq/streams/replay`` replays a stream's
    letters in order), and applies it when the predecessor comes.

    Each one is taken in a transaction that holds its stream's row lock, the lock the
    consumer takes too, and deleted only if still parked: an event the consumer applies
    meanwhile is never also dead-lettered, and one being dead-lettered is never applied. The
    letter is written and published in that same transaction, so a failed publish leaves
    the event parked and no letter behind."""
    candidates = await pool.fetch(
        f"""
        SELECT p.source, p.aggregate_type, p.aggregate_id, p.sequence
        FROM parked_events p
        LEFT JOIN consumer_sequences s
               ON s.consumer = p.consumer AND s.source = p.source
              AND s.aggregate_type = p.aggregate_type AND s.aggregate_id = p.aggregate_id
        WHERE p.consumer = $1 AND p.parked_at < now() - make_interval(secs => $2)
          AND NOT {_PREDECESSOR_IS_A_LETTER.format(last="coalesce(s.last_sequence, 0)")}
        ORDER BY p.parked_at
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
                f"""
                DELETE FROM parked_events p
                WHERE consumer = $1 AND source = $3 AND aggregate_type = $4
                  AND aggregate_id = $5 AND sequence = $6
                  AND NOT {_PREDECESSOR_IS_A_LETTER.format(last="$7")}
                RETURNING *
                """,
                consumer,
                timeout_seconds,
                *stream,
                candidate["sequence"],
                last,
            )
            if row is None:
                continue  # applied since we looked, or its predecessor was dead-lettered
            letter = _gap_letter(consumer, row, last, timeout_seconds)
            await sink.keep(cast(asyncpg.Connection, conn), letter)
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
        stream=(row["source"], row["aggregate_type"], row["aggregate_id"]),
        sequence=row["sequence"],
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
