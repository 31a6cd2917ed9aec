"""The PostgreSQL adapters of the machinery's ports: outbox, inbox, pending (debounced)
events and unit of work.

The shared contract tests (``shared/tests/contract``) run the same cases against these and
against the in-memory fakes of :mod:`shared.testing.fakes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast
from uuid import UUID

import asyncpg

from shared.consuming.inbox import Inbox, ParkedEvent, Stream, StreamPosition
from shared.contracts import decode_payload, spec_of
from shared.contracts.envelope import Envelope, parse_envelope
from shared.faults import failpoint
from shared.writing.aggregate import ConcurrencyError
from shared.writing.outbox import AggregateKey, LastSequences, Outbox, OutgoingMessage
from shared.writing.pending import HeldEvent, HeldKey, PendingEvents
from shared.writing.storm import FanOutGuard
from shared.writing.uow import Coarse, UnitOfWork, debounced

# The records of one write, in order: $1..$5 are the arrays of ``_records``. created_at is
# when the rows are written, the transaction's last statement before its commit
# (clock_timestamp(), not now(), which is when the transaction began): the relay measures from
# there to the broker's ack, not the writer's transaction too.
_INSERT_RECORDS = """
    INSERT INTO outbox (event_id, topic, message_key, value, headers, created_at)
    SELECT r.event_id, r.topic, r.message_key, r.value, r.headers::jsonb, clock_timestamp()
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])
         WITH ORDINALITY AS r(event_id, topic, message_key, value, headers, position)
"""


def _records(
    messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
) -> tuple[list[UUID], list[str], list[str | None], list[bytes], list[str]]:
    """The records as the five arrays of ``_INSERT_RECORDS``."""
    return (
        [e.event_id for e in envelopes],
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.value for m in messages],
        [json.dumps(m.headers) for m in messages],
    )


async def rows_by_key(
    conn: asyncpg.Connection, table: str, key: str, keys: Sequence[object], *, lock: bool
) -> list[asyncpg.Record]:
    """The rows of ``table`` whose ``key`` column is one of ``keys``, in key order, locked
    until commit with ``lock`` (in that order, so two transactions never deadlock).

    One key is looked up with ``=``, several with ``= ANY``: PostgreSQL plans a statement
    with an array parameter anew on every call (its plan for the array it is given always
    looks cheaper than the generic plan, which guesses ten elements), and planning such a
    lookup costs more than running it (``pg_stat_statements.track_planning``, 2026-12-07:
    0.06-0.12 ms against 0.04-0.08). The one-key form is planned once per connection."""
    where = f"{key} = $1" if len(keys) == 1 else f"{key} = ANY($1)"
    query = f"SELECT * FROM {table} WHERE {where} ORDER BY {key}" + (" FOR UPDATE" if lock else "")
    return list(await conn.fetch(query, keys[0] if len(keys) == 1 else list(keys)))


class PostgresOutbox(Outbox):
    """Rows in the ``outbox`` table. The sequences come from one upsert on
    ``outbox_sequences``: its row locks (taken in key order, so two writers cannot deadlock)
    make a second writer of the same aggregate wait for the first to commit, so sequence
    order, outbox id order and commit order agree.

    Events numbered ahead (of new aggregates, or of ones whose last sequence this process
    remembers) are written in one statement: the sequence rows are taken, in key order, only
    if every guess matches (a writer that moved one on meanwhile is waited for, as by the
    upsert, and then fails the check), and the records stored only if every row was."""

    known = LastSequences()  # of this process: every outbox of every pool shares it

    def __init__(self, conn: asyncpg.Connection, source: str) -> None:
        super().__init__(source)
        self._conn = conn
        self.written = False

    async def _take_sequences(self, counts: Mapping[AggregateKey, int]) -> dict[AggregateKey, int]:
        keys = sorted(counts)
        rows = await self._conn.fetch(
            """
            INSERT INTO outbox_sequences AS s (aggregate_type, aggregate_id, last_sequence)
            SELECT k.aggregate_type, k.aggregate_id, k.n
            FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(aggregate_type, aggregate_id, n)
            ORDER BY k.aggregate_type, k.aggregate_id
            ON CONFLICT (aggregate_type, aggregate_id)
            DO UPDATE SET last_sequence = s.last_sequence + EXCLUDED.last_sequence,
                          updated_at = now()
            RETURNING s.aggregate_type, s.aggregate_id, s.last_sequence
            """,
            [t for t, _ in keys],
            [i for _, i in keys],
            [counts[k] for k in keys],
        )
        return {
            (r["aggregate_type"], r["aggregate_id"]): r["last_sequence"]
            - counts[(r["aggregate_type"], r["aggregate_id"])]
            + 1
            for r in rows
        }

    async def _store(
        self, messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
    ) -> None:
        await self._conn.execute(
            _INSERT_RECORDS + "ORDER BY r.position", *_records(messages, envelopes)
        )
        self.written = True

    async def _store_numbered(
        self,
        last: Mapping[AggregateKey, int],
        counts: Mapping[AggregateKey, int],
        messages: Sequence[OutgoingMessage],
        envelopes: Sequence[Envelope],
    ) -> bool:
        keys = sorted(counts)
        # The guard compares the guesses with the sequence rows committed before the
        # statement began: when one is wrong, nothing is taken and nothing stored. A row
        # moved on since (its writer waited for) fails the upsert's own WHERE, which reads
        # the row as it now stands; then the rows taken before it must not commit (the
        # fallback's upsert would add to them: a gap), so the transaction fails, to be
        # retried.
        row = await self._conn.fetchrow(
            """
            WITH guess AS (
                SELECT * FROM unnest($6::text[], $7::text[], $8::bigint[], $9::bigint[])
                    AS g(aggregate_type, aggregate_id, last_sequence, n)
            ), taken AS (
                INSERT INTO outbox_sequences AS s (aggregate_type, aggregate_id, last_sequence)
                SELECT g.aggregate_type, g.aggregate_id, g.last_sequence + g.n FROM guess g
                WHERE NOT EXISTS (
                    SELECT FROM guess g
                    LEFT JOIN outbox_sequences s USING (aggregate_type, aggregate_id)
                    WHERE coalesce(s.last_sequence, 0) <> g.last_sequence
                )
                ORDER BY g.aggregate_type, g.aggregate_id
                ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                SET last_sequence = EXCLUDED.last_sequence, updated_at = now()
                WHERE s.last_sequence = (
                    SELECT g.last_sequence FROM guess g
                    WHERE (g.aggregate_type, g.aggregate_id) = (s.aggregate_type, s.aggregate_id)
                )
                RETURNING 1
            ), stored AS ("""
            + _INSERT_RECORDS
            + """
                WHERE (SELECT count(*) FROM taken) = cardinality($6::text[])
                ORDER BY r.position
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM taken) AS taken, (SELECT count(*) FROM stored) AS stored
            """,
            *_records(messages, envelopes),
            [t for t, _ in keys],
            [i for _, i in keys],
            [last[k] for k in keys],
            [counts[k] for k in keys],
        )
        assert row is not None  # an aggregate query returns one row
        if row["stored"]:
            self.written = True
            return True
        if row["taken"]:
            raise ConcurrencyError(
                "another transaction moved an aggregate's sequence on during this write"
            )
        return False


def _columns(streams: Sequence[Stream]) -> tuple[list[str], list[str], list[str]]:
    """Streams as three arrays (source, aggregate type, aggregate id), for ``unnest``."""
    return ([s[0] for s in streams], [s[1] for s in streams], [s[2] for s in streams])


OutboxFactory = Callable[[asyncpg.Connection, str], PostgresOutbox]


class PostgresInbox(Inbox):
    def __init__(self, conn: asyncpg.Connection, consumer: str) -> None:
        self._conn = conn
        self._consumer = consumer

    async def seen(self, event_id: UUID) -> bool:
        found = await self._conn.fetchval(
            "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2",
            self._consumer,
            event_id,
        )
        return found is not None

    async def lock_stream(self, stream: Stream) -> StreamPosition:
        return (await self.lock_streams([stream]))[stream]

    async def lock_streams(self, streams: Iterable[Stream]) -> dict[Stream, StreamPosition]:
        """Lock the streams' rows (creating those missing) and return where each stands, in
        one statement. An upsert that changes nothing still locks the row and returns it.

        Whether events are parked is the row's own ``parked`` count, not an EXISTS on
        ``parked_events``: under READ COMMITTED a statement reads other tables as they were
        when it began, before it waited for a lock, so an event parked by a transaction that
        committed meanwhile (two owners of one partition, for a moment) would go unseen and
        stay parked until its gap timeout dead-lettered it. The row an upsert waited for is
        re-read at its latest committed version, count included; the count changes only
        while that row is locked (``park``, ``unpark``, the gap expiry)."""
        keys = sorted(set(streams))
        if not keys:
            return {}
        rows = await self._conn.fetch(
            """
            INSERT INTO consumer_sequences AS s (consumer, source, aggregate_type, aggregate_id,
                                                 last_sequence)
            SELECT $1, k.source, k.aggregate_type, k.aggregate_id, 0
            FROM unnest($2::text[], $3::text[], $4::text[]) AS k(source, aggregate_type,
                                                                aggregate_id)
            ORDER BY k.source, k.aggregate_type, k.aggregate_id
            ON CONFLICT (consumer, source, aggregate_type, aggregate_id)
            DO UPDATE SET last_sequence = s.last_sequence
            RETURNING s.source, s.aggregate_type, s.aggregate_id, s.last_sequence, s.parked
            """,
            self._consumer,
            *_columns(keys),
        )
        return {
            (r["source"], r["aggregate_type"], r["aggregate_id"]): StreamPosition(
                r["last_sequence"], r["parked"] > 0
            )
            for r in rows
        }

    async def advance_all(
        self, positions: Mapping[Stream, int], *, mark_processed: Sequence[UUID] = ()
    ) -> set[UUID]:
        keys = sorted(positions)
        if not keys and not mark_processed:
            return set()
        # One statement, two writes: a data-modifying CTE runs whether or not the query
        # reads it, so the streams advance though only the dedup rows are returned.
        rows = await self._conn.fetch(
            """
            WITH marked AS (
                INSERT INTO processed_events (consumer, event_id)
                SELECT $1, unnest($6::uuid[])
                ON CONFLICT DO NOTHING
                RETURNING event_id
            ), advanced AS (
                INSERT INTO consumer_sequences AS s (consumer, source, aggregate_type,
                                                     aggregate_id, last_sequence)
                SELECT $1, k.source, k.aggregate_type, k.aggregate_id, k.last_sequence
                FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[])
                     AS k(source, aggregate_type, aggregate_id, last_sequence)
                ORDER BY k.source, k.aggregate_type, k.aggregate_id
                ON CONFLICT (consumer, source, aggregate_type, aggregate_id) DO UPDATE
                SET last_sequence = GREATEST(s.last_sequence, EXCLUDED.last_sequence),
                    updated_at = now()
            )
            SELECT event_id FROM marked
            """,
            self._consumer,
            *_columns(keys),
            [positions[k] for k in keys],
            list(mark_processed),
        )
        return {r["event_id"] for r in rows}

    async def mark_processed(self, event_id: UUID) -> bool:
        inserted = await self._conn.fetchval(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING true",
            self._consumer,
            event_id,
        )
        return inserted is not None

    async def advance(self, stream: Stream, sequence: int) -> None:
        await self._conn.execute(
            """
            INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,
                                            last_sequence)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (consumer, source, aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = GREATEST(consumer_sequences.last_sequence, $5),
                updated_at = now()
            """,
            self._consumer,
            *stream,
            sequence,
        )

    async def pass_over(self, stream: Stream, sequence: int) -> bool:
        # One statement: an UPDATE that waited for the row's lock re-evaluates its WHERE on
        # the row's latest committed version, parked count included (see lock_streams), so
        # it never passes over an event whose successor was parked meanwhile. A stream never
        # seen has no row: the slow path creates it.
        result = await self._conn.execute(
            """
            UPDATE consumer_sequences SET last_sequence = $5, updated_at = now()
            WHERE consumer = $1 AND source = $2 AND aggregate_type = $3 AND aggregate_id = $4
              AND last_sequence = $5 - 1 AND parked = 0
            """,
            self._consumer,
            *stream,
            sequence,
        )
        return bool(result == "UPDATE 1")

    async def park(self, event: ParkedEvent) -> None:
        # The stream's parked count goes up only when the event was not parked already; an
        # upsert, so parking counts on a stream whose row does not exist yet too.
        await self._conn.execute(
            """
            WITH parked AS (
                INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id,
                                           sequence, topic, partition, "offset", value, headers)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING
                RETURNING 1
            )
            INSERT INTO consumer_sequences AS s (consumer, source, aggregate_type, aggregate_id,
                                                 last_sequence, parked)
            SELECT $1, $2, $3, $4, 0, 1 FROM parked
            ON CONFLICT (consumer, source, aggregate_type, aggregate_id)
            DO UPDATE SET parked = s.parked + 1
            """,
            self._consumer,
            *event.envelope.stream,
            event.envelope.sequence,
            event.topic,
            event.partition,
            event.offset,
            event.envelope.to_bytes(),
            json.dumps(event.headers),
        )

    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None:
        row = await self._conn.fetchrow(
            """
            WITH unparked AS (
                DELETE FROM parked_events
                WHERE consumer = $1 AND source = $2 AND aggregate_type = $3
                  AND aggregate_id = $4 AND sequence = $5
                RETURNING topic, partition, "offset", value, headers
            ), counted AS (
                UPDATE consumer_sequences SET parked = parked - 1
                WHERE consumer = $1 AND source = $2 AND aggregate_type = $3
                  AND aggregate_id = $4 AND EXISTS (SELECT 1 FROM unparked)
            )
            SELECT * FROM unparked
            """,
            self._consumer,
            *stream,
            sequence,
        )
        if row is None:
            return None
        return ParkedEvent(
            parse_envelope(row["value"]),
            row["topic"],
            row["partition"],
            row["offset"],
            json.loads(row["headers"]),
        )

    async def count_failure(self, topic: str, partition: int, offset: int, error: str) -> int:
        attempts: int = await self._conn.fetchval(
            """
            INSERT INTO consumer_attempts AS a (consumer, topic, partition, "offset", attempts,
                                                last_error)
            VALUES ($1, $2, $3, $4, 1, $5)
            ON CONFLICT (consumer, topic, partition, "offset") DO UPDATE
            SET attempts = a.attempts + 1, last_error = EXCLUDED.last_error, updated_at = now()
            RETURNING a.attempts
            """,
            self._consumer,
            topic,
            partition,
            offset,
            error,
        )
        return attempts

    async def forget_failures(self, topic: str, partition: int, offset: int) -> None:
        await self._conn.execute(
            """
            DELETE FROM consumer_attempts
            WHERE consumer = $1 AND topic = $2 AND partition = $3 AND "offset" = $4
            """,
            self._consumer,
            topic,
            partition,
            offset,
        )


class PostgresPendingEvents(PendingEvents):
    def __init__(self, conn: asyncpg.Connection, source: str) -> None:
        super().__init__(source)
        self._conn = conn

    async def _store(self, holds: Mapping[HeldKey, tuple[HeldEvent, int]]) -> None:
        # One upsert, in key order so two writers never deadlock; first_at stays that of
        # the first change of the burst.
        keys = list(holds)
        events = [holds[k][0] for k in keys]
        await self._conn.execute(
            """
            INSERT INTO debounced_events AS d (aggregate_type, aggregate_id, event_type,
                schema_version, payload, correlation_id, causation_id, trace_headers,
                changes, first_at, last_at)
            SELECT h.aggregate_type, h.aggregate_id, h.event_type, h.schema_version,
                   h.payload::jsonb, h.correlation_id, h.causation_id, h.trace_headers::jsonb,
                   h.changes, clock_timestamp(), clock_timestamp()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                        $7::text[], $8::text[], $9::bigint[])
                 AS h(aggregate_type, aggregate_id, event_type, schema_version, payload,
                      correlation_id, causation_id, trace_headers, changes)
            ORDER BY h.aggregate_type, h.aggregate_id, h.event_type
            ON CONFLICT (aggregate_type, aggregate_id, event_type) DO UPDATE
            SET schema_version = EXCLUDED.schema_version, payload = EXCLUDED.payload,
                correlation_id = EXCLUDED.correlation_id,
                causation_id = EXCLUDED.causation_id,
                trace_headers = EXCLUDED.trace_headers,
                changes = d.changes + EXCLUDED.changes, last_at = EXCLUDED.last_at
            """,
            [t for t, _, _ in keys],
            [i for _, i, _ in keys],
            [e for _, _, e in keys],
            [spec_of(h.event).schema_version for h in events],
            [h.event.model_dump_json() for h in events],
            [h.correlation_id for h in events],
            [h.causation_id for h in events],
            [json.dumps(h.trace_headers) for h in events],
            [holds[k][1] for k in keys],
        )

    async def waiting(self) -> list[tuple[HeldEvent, int]]:
        rows = await self._conn.fetch(
            """
            SELECT event_type, schema_version, payload, aggregate_id, correlation_id,
                   causation_id, trace_headers, changes
            FROM debounced_events ORDER BY first_at, aggregate_id
            """
        )
        return [
            (
                HeldEvent(
                    decode_payload(r["event_type"], r["schema_version"], json.loads(r["payload"])),
                    r["aggregate_id"],
                    r["correlation_id"],
                    r["causation_id"],
                    json.loads(r["trace_headers"]),
                ),
                r["changes"],
            )
            for r in rows
        ]


class PostgresUnitOfWork(UnitOfWork):
    """A pooled connection in a transaction. Subclasses build their repositories on
    ``self.conn`` in ``_begin``. ``new_outbox`` builds its outbox on the connection
    (:class:`PostgresOutbox`; a pitfall mode swaps in another writer)."""

    conn: asyncpg.Connection

    def __init__(
        self,
        pool: asyncpg.Pool,
        source: str,
        *,
        new_outbox: OutboxFactory | None = None,
        outbox_written: Callable[[], None] | None = None,
        acquire_timeout: float | None = None,
        coarse: Coarse = debounced,
        fanout: FanOutGuard | None = None,
    ) -> None:
        super().__init__(coarse=coarse, fanout=fanout)
        self._pool = pool
        self._source = source
        self._new_outbox = new_outbox or PostgresOutbox
        self._outbox_written = outbox_written
        self._acquire_timeout = acquire_timeout

    async def _begin(self) -> None:
        # Past the timeout: asyncio.TimeoutError, which HTTP answers with 503 and the
        # consumer waits out like any database outage.
        self._proxy = await self._pool.acquire(timeout=self._acquire_timeout)
        self.conn = cast(asyncpg.Connection, self._proxy)
        self._released = False
        self._tx = self.conn.transaction()
        try:
            await self._tx.start()
        except BaseException as exc:
            if isinstance(exc, asyncpg.exceptions.InternalClientError):
                # A connection left broken by a server restart (see shared.persistence.db): closed,
                # so the pool opens a new one instead of handing this one out again.
                self.conn.terminate()
            await self._release()
            raise
        self.outbox: PostgresOutbox = self._new_outbox(self.conn, self._source)
        self.inbox = PostgresInbox(self.conn, self._source)
        self.pending = PostgresPendingEvents(self.conn, self._source)

    async def _commit(self) -> None:
        try:
            await self._tx.commit()
        finally:
            await self._release()
        if self.outbox.written:
            if self._outbox_written is not None:
                # An in-process signal, not pg_notify: a notifying transaction takes a lock
                # that serialises every such commit in the whole cluster, fsync included.
                self._outbox_written()
            await failpoint("uow.after_commit")
        await self.outbox.committed()

    async def _rollback(self) -> None:
        if self._released:
            return
        try:
            await self._tx.rollback()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass  # the connection is gone; so is the transaction
        finally:
            await self._release()

    async def _release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool.release(self._proxy)
