"""Retention against real PostgreSQL: what no longer protects anything goes, in batches, and
what still can is kept."""

from __future__ import annotations

import json
from typing import Any, cast
from uuid import uuid4

import asyncpg
import pytest

from shared.persistence.maintenance import (
    apply_retention,
    purge_consumer_attempts,
    purge_consumer_sequences,
    purge_dead_letters,
    purge_outbox_sequences,
    purge_processed_events,
)
from shared.persistence.postgres import PostgresOutbox
from shared.service.settings import ServiceSettings

DAY = "interval '1 day'"


class CountingPool:
    """The pool, counting the statements run through ``execute``: one per batch."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements = 0

    async def execute(self, *args: Any) -> str:
        self.statements += 1
        result: str = await self._pool.execute(*args)
        return result


def counting(pool: asyncpg.Pool) -> tuple[asyncpg.Pool, CountingPool]:
    spy = CountingPool(pool)
    return cast(asyncpg.Pool, spy), spy


async def add_stream(pool: asyncpg.Pool, consumer: str, aggregate_id: str, idle_days: int) -> None:
    await pool.execute(
        "INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,"
        " last_sequence, updated_at) VALUES ($1, 'order', 'order', $2, 3, now() - $3 * "
        + DAY
        + ")",
        consumer,
        aggregate_id,
        idle_days,
    )


async def park(pool: asyncpg.Pool, consumer: str, aggregate_id: str) -> None:
    """An event parked on the stream, counted on its row as ``PostgresInbox.park`` does."""
    await pool.execute(
        "WITH p AS (INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id,"
        " sequence, topic, partition, \"offset\", value, headers) VALUES ($1, 'order', 'order',"
        " $2, 5, 'orders', 0, 1, ''::bytea, '{}'))"
        " UPDATE consumer_sequences SET parked = parked + 1"
        " WHERE consumer = $1 AND source = 'order' AND aggregate_type = 'order'"
        " AND aggregate_id = $2",
        consumer,
        aggregate_id,
    )


async def add_dead_letter(
    pool: asyncpg.Pool, consumer: str, key: str, replayed_days_ago: int | None, offset: int
) -> None:
    await pool.execute(
        'INSERT INTO dead_letters (consumer, topic, partition, "offset", message_key, value,'
        " headers, error, attempts, created_at, replayed_at) VALUES ($1, 'orders', 0, $2, $3,"
        " NULL, $4, 'boom', 1, now() - 400 * " + DAY + ", now() - $5 * " + DAY + ")",
        consumer,
        offset,
        key.encode(),
        json.dumps({}),
        replayed_days_ago,
    )


async def test_old_dedup_rows_are_purged_in_batches_and_recent_ones_kept(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT 'me', gen_random_uuid(), now() - 8 * " + DAY + " FROM generate_series(1, 25)"
    )
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT c, gen_random_uuid(), now() - d * "
        + DAY
        + " FROM (VALUES ('me', 1), ('me', 2), ('other', 8)) AS v(c, d)"
    )
    spy_pool, spy = counting(pool)
    assert await purge_processed_events(spy_pool, "me", 24 * 7, batch_size=10) == 25
    assert spy.statements == 3  # 10 + 10 + 5
    left = await pool.fetch("SELECT consumer FROM processed_events ORDER BY consumer")
    assert [r["consumer"] for r in left] == ["me", "me", "other"]


async def test_a_stream_row_goes_only_once_idle_past_the_horizon_with_nothing_parked_or_pending(
    pool: asyncpg.Pool,
) -> None:
    idle = [f"idle-{i}" for i in range(12)]
    for key in idle:
        await add_stream(pool, "me", key, idle_days=40)
    await add_stream(pool, "me", "recent", idle_days=10)
    await add_stream(pool, "me", "parked", idle_days=40)
    await park(pool, "me", "parked")
    await add_stream(pool, "me", "pending-letter", idle_days=40)
    await add_dead_letter(pool, "me", "pending-letter", None, offset=1)
    await add_stream(pool, "me", "replayed-letter", idle_days=40)
    await add_dead_letter(pool, "me", "replayed-letter", 35, offset=2)
    await add_stream(pool, "other", "idle-0", idle_days=40)

    spy_pool, spy = counting(pool)
    assert await purge_consumer_sequences(spy_pool, "me", 30, batch_size=5) == 13
    assert spy.statements == 3  # 5 + 5 + 3
    left = await pool.fetch(
        "SELECT consumer, aggregate_id FROM consumer_sequences ORDER BY consumer, aggregate_id"
    )
    assert [(r["consumer"], r["aggregate_id"]) for r in left] == [
        ("me", "parked"),
        ("me", "pending-letter"),
        ("me", "recent"),
        ("other", "idle-0"),
    ]


async def test_an_idle_aggregates_outbox_sequence_goes_and_its_next_event_starts_at_one(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        outbox = PostgresOutbox(cast(asyncpg.Connection, conn), "me")
        taken = await outbox._take_sequences(
            {("order", "idle"): 2, ("order", "unpublished"): 1, ("order", "recent"): 1}
        )
        assert taken == {("order", "idle"): 1, ("order", "unpublished"): 1, ("order", "recent"): 1}
    await pool.execute(
        "UPDATE outbox_sequences SET updated_at = now() - 70 * "
        + DAY
        + " WHERE aggregate_id <> 'recent'"
    )
    await pool.execute(
        "INSERT INTO outbox (event_id, topic, message_key, value, headers)"
        " VALUES ($1, 'orders', 'unpublished', ''::bytea, '{}')",
        uuid4(),
    )
    assert await purge_outbox_sequences(pool, 60) == 1
    left = await pool.fetch("SELECT aggregate_id FROM outbox_sequences ORDER BY aggregate_id")
    assert [r["aggregate_id"] for r in left] == ["recent", "unpublished"]
    async with pool.acquire() as conn, conn.transaction():
        outbox = PostgresOutbox(cast(asyncpg.Connection, conn), "me")
        taken = await outbox._take_sequences({("order", "idle"): 1, ("order", "recent"): 1})
        assert taken == {("order", "idle"): 1, ("order", "recent"): 2}


async def test_only_dead_letters_replayed_past_the_horizon_are_purged(pool: asyncpg.Pool) -> None:
    await add_dead_letter(pool, "me", "replayed-long-ago", 40, offset=1)
    await add_dead_letter(pool, "me", "pending", None, offset=2)
    await add_dead_letter(pool, "me", "replayed-lately", 3, offset=3)
    await add_dead_letter(pool, "other", "replayed-long-ago", 40, offset=4)
    assert await purge_dead_letters(pool, "me", 30) == 1
    left = await pool.fetch(
        "SELECT consumer, convert_from(message_key, 'UTF8') AS key FROM dead_letters"
        " ORDER BY consumer, key"
    )
    assert [(r["consumer"], r["key"]) for r in left] == [
        ("me", "pending"),
        ("me", "replayed-lately"),
        ("other", "replayed-long-ago"),
    ]


async def test_only_attempt_counts_left_unretried_past_the_topics_retention_are_purged(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        """
        INSERT INTO consumer_attempts (consumer, topic, partition, "offset", attempts, last_error,
                                       updated_at)
        VALUES ('me', 'orders', 0, 1, 2, 'e', now() - interval '8 days'),
               ('me', 'orders', 0, 2, 1, 'e', now()),
               ('other', 'orders', 0, 1, 2, 'e', now() - interval '8 days')
        """
    )
    assert await purge_consumer_attempts(pool, "me", 24 * 7) == 1
    left = await pool.fetch('SELECT consumer, "offset" FROM consumer_attempts ORDER BY 1, 2')
    assert [(r["consumer"], r["offset"]) for r in left] == [("me", 2), ("other", 1)]


async def test_the_settings_turn_each_purge_on(
    pool: asyncpg.Pool, settings: ServiceSettings
) -> None:
    me = settings.service_name
    await add_stream(pool, me, "idle", idle_days=40)
    await add_dead_letter(pool, me, "x", 40, offset=1)
    off = settings.model_copy(
        update={"outbox_sequence_retention_days": 0, "dead_letter_retention_days": 0}
    )
    assert await apply_retention(pool, off) == {
        "processed_events": 0,
        "consumer_attempts": 0,
        "consumer_sequences": 1,
    }
    assert await apply_retention(pool, settings) == {
        "processed_events": 0,
        "consumer_attempts": 0,
        "consumer_sequences": 0,
        "outbox_sequences": 0,
        "dead_letters": 1,
    }


@pytest.mark.parametrize(("consumer_days", "outbox_days"), [(30, 30), (30, 10), (0, 60), (5, 60)])
def test_sequence_horizons_that_could_drop_or_strand_an_event_are_refused(
    consumer_days: float, outbox_days: float
) -> None:
    with pytest.raises(ValueError, match="retention"):
        ServiceSettings(
            service_name="x",
            http_port=1,
            database_url="postgresql://x/x",
            admin_token="a-real-token",
            consumer_sequence_retention_days=consumer_days,
            outbox_sequence_retention_days=outbox_days,
        )
