"""Periodic housekeeping of a service's machinery tables."""

from __future__ import annotations

import json
from typing import cast

import asyncpg

from shared.consuming.deadletter import DeadLetter, DeadLetterSink
from shared.observability.metrics import (
    DEBOUNCE_PENDING,
    DLQ_DEPTH,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    PARKED_EVENTS,
)
from shared.persistence.postgres import PostgresInbox
from shared.service.settings import ServiceSettings


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
            # The stream's parked count goes down with the event, in the same statement.
            row = await conn.fetchrow(
                f"""
                WITH expired AS (
                    DELETE FROM parked_events p
                    WHERE consumer = $1 AND source = $3 AND aggregate_type = $4
                      AND aggregate_id = $5 AND sequence = $6
                      AND NOT {_PREDECESSOR_IS_A_LETTER.format(last="$7")}
                    RETURNING *
                ), counted AS (
                    UPDATE consumer_sequences SET parked = parked - 1
                    WHERE consumer = $1 AND source = $3 AND aggregate_type = $4
                      AND aggregate_id = $5 AND EXISTS (SELECT 1 FROM expired)
                )
                SELECT * FROM expired
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


async def _delete_in_batches(
    pool: asyncpg.Pool, delete: str, *args: object, batch_size: int
) -> int:
    """Run ``delete`` (whose last parameter is the batch size) until it deletes less than a
    batch. Each statement is its own short transaction: locks, WAL and the time other work
    waits stay bounded however much there is to purge. Returns how many rows went."""
    total = 0
    while True:
        result: str = await pool.execute(delete, *args, batch_size)
        deleted = int(result.rsplit(maxsplit=1)[-1])
        total += deleted
        if deleted < batch_size:
            return total


async def purge_processed_events(
    pool: asyncpg.Pool, consumer: str, retention_hours: float, *, batch_size: int = 1000
) -> int:
    """Delete dedup rows older than the topic retention: Kafka can no longer redeliver
    those events, so remembering them protects nothing. Returns how many were deleted."""
    return await _delete_in_batches(
        pool,
        """
        DELETE FROM processed_events WHERE consumer = $1 AND event_id IN (
            SELECT event_id FROM processed_events
            WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)
            LIMIT $3 FOR UPDATE SKIP LOCKED)
        """,
        consumer,
        retention_hours * 3600.0,
        batch_size=batch_size,
    )


async def purge_consumer_attempts(
    pool: asyncpg.Pool, consumer: str, retention_hours: float, *, batch_size: int = 1000
) -> int:
    """Delete the failed-attempt counts of records not retried for the topics' retention:
    left behind when a member applied a record another one had failed (only the member that
    counted a failure forgets it). Kafka can no longer redeliver those records. Returns how
    many rows went."""
    return await _delete_in_batches(
        pool,
        """
        DELETE FROM consumer_attempts WHERE (consumer, topic, partition, "offset") IN (
            SELECT consumer, topic, partition, "offset" FROM consumer_attempts
            WHERE consumer = $1 AND updated_at < now() - make_interval(secs => $2)
            LIMIT $3 FOR UPDATE SKIP LOCKED)
        """,
        consumer,
        retention_hours * 3600.0,
        batch_size=batch_size,
    )


async def purge_consumer_sequences(
    pool: asyncpg.Pool, consumer: str, idle_days: float, *, batch_size: int = 1000
) -> int:
    """Forget the position of streams no event of which can still arrive: idle for
    ``idle_days`` (well past the topics' retention, so Kafka cannot redeliver one), nothing
    parked for them and no dead letter of theirs waiting for a replay. A row the consumer
    holds locked is skipped (it is not idle). Returns how many rows went."""
    return await _delete_in_batches(
        pool,
        """
        DELETE FROM consumer_sequences WHERE (consumer, source, aggregate_type, aggregate_id) IN (
            SELECT s.consumer, s.source, s.aggregate_type, s.aggregate_id
            FROM consumer_sequences s
            WHERE s.consumer = $1 AND s.updated_at < now() - make_interval(secs => $2)
              AND s.parked = 0
              AND NOT EXISTS (
                  SELECT 1 FROM dead_letters d
                  WHERE d.consumer = s.consumer AND d.replayed_at IS NULL
                    AND d.message_key = convert_to(s.aggregate_id, 'UTF8'))
            LIMIT $3 FOR UPDATE OF s SKIP LOCKED)
        """,
        consumer,
        idle_days * 86400.0,
        batch_size=batch_size,
    )


async def purge_outbox_sequences(
    pool: asyncpg.Pool, idle_days: float, *, batch_size: int = 1000
) -> int:
    """Forget the sequence of aggregates that published nothing for ``idle_days`` and have
    nothing left in the outbox; the next event of one starts again at 1, which consumers
    accept only because they forgot the stream first (``outbox_sequence_retention_days``
    exceeds ``consumer_sequence_retention_days``). Returns how many rows went."""
    return await _delete_in_batches(
        pool,
        """
        DELETE FROM outbox_sequences WHERE (aggregate_type, aggregate_id) IN (
            SELECT q.aggregate_type, q.aggregate_id FROM outbox_sequences q
            WHERE q.updated_at < now() - make_interval(secs => $1)
              AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message_key = q.aggregate_id)
            LIMIT $2 FOR UPDATE OF q SKIP LOCKED)
        """,
        idle_days * 86400.0,
        batch_size=batch_size,
    )


async def purge_dead_letters(
    pool: asyncpg.Pool, consumer: str, replayed_days: float, *, batch_size: int = 1000
) -> int:
    """Delete the index rows of dead letters replayed more than ``replayed_days`` ago (the
    record stays on the dead-letter topic for its retention). Pending letters are kept,
    however old. Returns how many rows went."""
    return await _delete_in_batches(
        pool,
        """
        DELETE FROM dead_letters WHERE id IN (
            SELECT id FROM dead_letters
            WHERE consumer = $1 AND replayed_at < now() - make_interval(secs => $2)
            LIMIT $3 FOR UPDATE SKIP LOCKED)
        """,
        consumer,
        replayed_days * 86400.0,
        batch_size=batch_size,
    )


async def apply_retention(pool: asyncpg.Pool, settings: ServiceSettings) -> dict[str, int]:
    """Every retention purge the settings turn on; how many rows each one deleted."""
    consumer, batch = settings.service_name, settings.retention_batch_size
    purged = {
        "processed_events": await purge_processed_events(
            pool, consumer, settings.dedup_retention_hours, batch_size=batch
        ),
        "consumer_attempts": await purge_consumer_attempts(
            pool, consumer, settings.dedup_retention_hours, batch_size=batch
        ),
    }
    if settings.consumer_sequence_retention_days:
        purged["consumer_sequences"] = await purge_consumer_sequences(
            pool, consumer, settings.consumer_sequence_retention_days, batch_size=batch
        )
    if settings.outbox_sequence_retention_days:
        purged["outbox_sequences"] = await purge_outbox_sequences(
            pool, settings.outbox_sequence_retention_days, batch_size=batch
        )
    if settings.dead_letter_retention_days:
        purged["dead_letters"] = await purge_dead_letters(
            pool, consumer, settings.dead_letter_retention_days, batch_size=batch
        )
    return purged
