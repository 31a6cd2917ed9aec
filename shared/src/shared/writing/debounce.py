"""Debounce at the source, durably: a burst of changes to one aggregate becomes one
integration event, the last one, once the aggregate has been quiet for a while.

A domain event that names the coarse event it is published as
(:meth:`shared.writing.aggregate.DomainEvent.published_as`) is not appended to the outbox: the
unit of work *holds* that integration event (:class:`shared.writing.pending.PendingEvents`) in
``debounced_events``, in the same transaction as the
change, one row per ``(aggregate, event type)``, the last change of a burst overwriting the
one before. :class:`DebounceEmitter` moves a held event to the outbox once

- its aggregate has been quiet for ``debounce_quiet_seconds`` (the last change is that old), or
- the first change it holds is ``debounce_max_wait_seconds`` old, so a burst that never
  ends still emits.

Properties:

- **Crash-safe.** The held event is a row committed with the change: a process killed during
  the quiet period loses nothing, and whichever instance runs the emitter next sends it.
- **Never twice.** The emitter claims due rows with ``FOR UPDATE SKIP LOCKED`` and deletes
  them in the transaction that appends them to the outbox: two emitters never claim one row.
  A change committed while its row is being emitted waits on the row lock, then starts a new
  row (a new burst): nothing is lost between the two.
- **Ordered.** No sequence is held: the event takes the aggregate's next sequence when it is
  emitted, through the ordinary outbox.
- The event keeps the correlation id, causation id and trace context of the last change.

The pitfall mode ``PITFALL_NO_DEBOUNCE`` swaps the hold for :mod:`shared.pitfalls.no_debounce`:
every change goes to the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import cast

import asyncpg

from shared.contracts import decode_payload
from shared.observability.correlation import correlated
from shared.observability.metrics import DEBOUNCE_EMITTED
from shared.observability.tracing import attach, context_from_headers, detach
from shared.persistence.db import DATABASE_ERRORS
from shared.persistence.postgres import OutboxFactory, PostgresOutbox

log = logging.getLogger(__name__)


# A held event is due once quiet for $1 seconds, or its burst began $2 seconds ago.
_DUE = """last_at <= clock_timestamp() - make_interval(secs => $1)
          OR first_at <= clock_timestamp() - make_interval(secs => $2)"""


class DebounceEmitter:
    """Moves due held events to the outbox; run by every instance of a service (see the
    module docstring for why two never emit one event twice)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        source: str,
        *,
        quiet_seconds: float,
        max_wait_seconds: float,
        poll_seconds: float,
        batch_size: int = 200,
        emitted: Callable[[], None] | None = None,
        new_outbox: OutboxFactory = PostgresOutbox,
    ) -> None:
        self._pool = pool
        self._source = source
        self._quiet = quiet_seconds
        self._max_wait = max_wait_seconds
        self._poll = poll_seconds
        self._batch = batch_size
        self._emitted = emitted
        self._new_outbox = new_outbox

    async def run(self) -> None:
        """Until cancelled: emit what is due, then wait a poll interval."""
        while True:
            try:
                while await self.emit_due() >= self._batch:
                    pass
            except DATABASE_ERRORS as exc:
                log.warning("debounce emitter skipped a round: %s", exc)
            await asyncio.sleep(self._poll)

    async def emit_due(self) -> int:
        """Emit up to one batch of due events, each with its aggregate's next sequence;
        returns how many. Most polls find nothing due: they cost one statement, outside a
        transaction, not a transaction of three (BEGIN, the claim, COMMIT)."""
        if not await self._pool.fetchval(
            f"SELECT EXISTS (SELECT FROM debounced_events WHERE {_DUE})",
            self._quiet,
            self._max_wait,
        ):
            return 0
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"""
                SELECT aggregate_type, aggregate_id, event_type, schema_version, payload,
                       correlation_id, causation_id, trace_headers, changes
                FROM debounced_events
                WHERE {_DUE}
                ORDER BY first_at
                LIMIT $3
                FOR UPDATE SKIP LOCKED
                """,
                self._quiet,
                self._max_wait,
                self._batch,
            )
            outbox = self._new_outbox(cast(asyncpg.Connection, conn), self._source)
            for row in rows:
                event = decode_payload(
                    row["event_type"], row["schema_version"], json.loads(row["payload"])
                )
                token = attach(context_from_headers(json.loads(row["trace_headers"])))
                try:
                    with correlated(row["correlation_id"], row["causation_id"]):
                        await outbox.append(event, aggregate_id=row["aggregate_id"])
                finally:
                    detach(token)
            await outbox.write()
            if rows:
                await conn.execute(
                    """
                    DELETE FROM debounced_events d
                    USING unnest($1::text[], $2::text[], $3::text[]) AS k(t, i, e)
                    WHERE d.aggregate_type = k.t AND d.aggregate_id = k.i AND d.event_type = k.e
                    """,
                    [r["aggregate_type"] for r in rows],
                    [r["aggregate_id"] for r in rows],
                    [r["event_type"] for r in rows],
                )
        for row in rows:
            DEBOUNCE_EMITTED.labels(self._source, row["event_type"]).inc()
            log.debug(
                "emitted %s for %s after %d changes",
                row["event_type"],
                row["aggregate_id"],
                row["changes"],
            )
        await outbox.committed()
        if rows and self._emitted is not None:
            self._emitted()
        return len(rows)
