"""The outbox relay: publishes committed outbox rows to Kafka, in order, at least once.

- One active relay per service: it holds a PostgreSQL advisory lock on a dedicated
  connection. Standby instances retry the lock every second; when the leader dies its
  session ends, the lock is freed and a standby takes over within seconds. A single leader
  keeps per-aggregate order without coordinating partitions between relays.
- Rows are read in id order and published; once the broker acknowledged the whole batch,
  its ids are remembered, and the next pass deletes them and reads the next batch in one
  statement (a ``DELETE`` in a CTE; it shares the ``SELECT``'s snapshot, so the ``SELECT``
  leaves those ids out itself): one round trip and one transaction per pass, not two. A
  row is never deleted before its ack. No "highest id seen" cursor: a row whose transaction
  commits late is simply still in the table next time. The lease makes this relay the only
  one reading and deleting rows, so no transaction (and no row lock) is held while the
  broker is waited for: a broker outage holds back neither VACUUM nor anyone who touches
  the outbox.
- Acknowledged rows stay in the table until the next pass, which comes within
  ``relay_poll_min_seconds`` (a pass that published never waits longer) and, finding
  nothing, still deletes them; only then does an idle relay back off. The outbox gauges
  (``outbox_backlog``, ``outbox_oldest_age_seconds``) may count them for that moment. When
  the relay stops or loses its lease, it deletes them on the way out, best effort and
  bounded, so a clean shutdown leaves no published row behind.
- Woken in-process right after a unit of work of this process commits outbox rows
  (``wake``), and otherwise polls adaptively: every ``relay_poll_min_seconds`` while rows keep
  coming, backing off to ``relay_poll_interval_seconds`` when idle, so rows committed by other
  processes (another instance, an admin replay) go out too. Not ``LISTEN/NOTIFY``: a
  transaction that notifies takes a cluster-wide lock through its commit, which serialised
  every outbox-writing commit of the suite.
- A crash, or a lost lease, between the ack and the next pass republishes the batch (the new
  leader reads its rows again): consumers drop the duplicates by event id and sequence, the
  suite's at-least-once stance. With the idempotent producer, retries inside a batch keep
  order.
- Woken while rows keep coming (the previous pass published, but less than a batch), the
  relay lingers ``relay_linger_seconds`` before reading, so rows committed by concurrent
  transactions go out in one produce request and one statement: a few milliseconds of
  latency at mid rates for fewer round trips. Never after an idle pass (a lone order is not
  delayed) nor after a full batch (the next one is read at once).
- Each record is keyed by its aggregate id (the row's ``message_key``), so one aggregate's
  events share a partition and arrive in order. The pitfall mode ``PITFALL_UNKEYED`` sends
  them without a key (:mod:`shared.pitfalls.unkeyed`), and the producer's default
  partitioner spreads them over partitions: the sequence check and parking of consumers have
  to put them back in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace
from opentelemetry.trace import Span

from shared.faults import failpoint
from shared.kafka import Producer
from shared.observability.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_TO_ACK_SECONDS,
    RELAY_PUBLISH_SECONDS,
)
from shared.observability.tracing import context_from_headers, tracer
from shared.service.settings import ServiceSettings
from shared.writing.outbox import OutgoingMessage

log = logging.getLogger(__name__)

RELAY_ERRORS: tuple[type[BaseException], ...] = (
    KafkaError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


LEASE_CHECK_SECONDS = 2.0
DELETE_ON_EXIT_SECONDS = 1.0  # a stopping relay's last delete: bounded, best effort

# One pass: delete what the broker acknowledged ($1) and read the next batch. The CTE's
# DELETE and the SELECT see the same snapshot, so the SELECT leaves those ids out itself.
_DELETE_PUBLISHED_AND_READ = """
    WITH published AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]))
    SELECT id, topic, message_key, value, headers, created_at FROM outbox
    WHERE id <> ALL($1::bigint[])
    ORDER BY id LIMIT $2
"""


def lease_key(service: str) -> int:
    """A stable advisory-lock key per service (advisory locks take a bigint)."""
    return zlib.crc32(f"outbox-relay:{service}".encode())


def aggregate_key(message_key: str) -> str:
    """The Kafka key of an outbox row's record: the row's key, its aggregate id, so one
    aggregate's events share a partition (``shared.pitfalls.unkeyed`` drops it)."""
    return message_key


class OutboxRelay:
    def __init__(
        self,
        settings: ServiceSettings,
        pool: asyncpg.Pool,
        producer: Producer,
        key_of: Callable[[str], str | None] = aggregate_key,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._producer = producer
        self._service = settings.service_name
        self._key_of = key_of
        self._wake = asyncio.Event()
        self._published: list[int] = []  # acknowledged by the broker, not yet deleted
        self.is_leader = False

    async def run(self) -> None:
        """Until cancelled: acquire the lease, then publish while holding it."""
        backoff = 0.5
        while True:
            try:
                await self._run_with_lease()
                backoff = 0.5
            except RELAY_ERRORS as exc:
                log.warning("relay interrupted (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _run_with_lease(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._settings.database_url)
        try:
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", lease_key(self._service)
            ):
                await asyncio.sleep(1.0)
            self.is_leader = True
            log.info("relay holds the outbox lease")
            try:
                await self._publish_until_cancelled(conn)
            finally:
                await self._delete_published_on_exit()  # before the next leader reads them
        finally:
            self.is_leader = False
            conn.terminate()  # ends the session: frees the lease at once

    def wake(self) -> None:
        """Rows were committed: publish now rather than at the next poll."""
        self._wake.set()

    async def _publish_until_cancelled(self, lease: asyncpg.Connection) -> None:
        checked = time.monotonic()
        idle_wait = self._settings.relay_poll_min_seconds
        while True:
            if time.monotonic() - checked > LEASE_CHECK_SECONDS:
                # A lease connection that died silently would let a standby lead too: prove
                # the session (and with it the advisory lock) is still alive.
                await asyncio.wait_for(lease.fetchval("SELECT 1"), LEASE_CHECK_SECONDS)
                checked = time.monotonic()
            self._wake.clear()
            published = await self.publish_batch()
            if published >= self._settings.relay_batch_size:
                continue  # more waiting: no pause
            if published:
                # Its rows are deleted by the next pass: at most one short poll away.
                idle_wait = self._settings.relay_poll_min_seconds
            else:
                idle_wait = min(idle_wait * 2, self._settings.relay_poll_interval_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle_wait)
            if published and self._wake.is_set() and self._settings.relay_linger_seconds:
                # Rows keep coming: a few ms more let concurrent commits join this batch,
                # one produce request and one statement for several of them.
                await asyncio.sleep(self._settings.relay_linger_seconds)

    async def publish_batch(self) -> int:
        """One pass: delete the rows of the previous batch the broker acknowledged, read the
        next batch and publish it; returns how many rows were published. Their ids are left
        for the next pass (or :meth:`delete_published`) to delete.

        One short statement before the publish, no transaction across it: a broker that
        does not answer holds no connection, row lock or snapshot for up to
        ``PUBLISH_TIMEOUT``. A batch whose publish fails is not deleted: the next pass reads
        it again. Without the lease (tests) two callers may both publish a row: a duplicate,
        which consumers drop."""
        rows = await self._pool.fetch(
            _DELETE_PUBLISHED_AND_READ, self._published, self._settings.relay_batch_size
        )
        self._published = []
        if not rows:
            return 0
        started = time.perf_counter()
        traced = [self._traced_message(row) for row in rows]
        messages = [message for message, _ in traced]
        try:
            await self._producer.publish(messages)
        finally:
            for _, span in traced:
                span.end()
        await failpoint("relay.after_publish")
        self._published = [row["id"] for row in rows]
        RELAY_PUBLISH_SECONDS.labels(self._service).observe(time.perf_counter() - started)
        acked = datetime.now(UTC)
        to_ack = OUTBOX_TO_ACK_SECONDS.labels(self._service)
        for row in rows:
            to_ack.observe((acked - row["created_at"]).total_seconds())
        for message in messages:
            EVENTS_PUBLISHED.labels(self._service, message.topic).inc()
        return len(rows)

    async def delete_published(self) -> None:
        """Delete the rows the broker acknowledged, which the next pass would have deleted."""
        if self._published:
            await self._pool.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", self._published
            )
            self._published = []

    async def _delete_published_on_exit(self) -> None:
        """Best effort and bounded: rows left behind are republished by the next leader, a
        duplicate consumers drop."""
        try:
            await asyncio.wait_for(self.delete_published(), DELETE_ON_EXIT_SECONDS)
        except RELAY_ERRORS as exc:
            log.warning("acknowledged outbox rows not deleted on exit (%s)", exc)

    def _traced_message(self, row: asyncpg.Record) -> tuple[OutgoingMessage, Span]:
        """A PRODUCER span, child of the span that wrote the row, ended once the broker
        acknowledged; its context replaces the row's in the Kafka headers so consumers
        continue the same trace."""
        headers: dict[str, str] = json.loads(row["headers"])
        key = self._key_of(row["message_key"])
        attributes: dict[str, str] = {
            "messaging.system": "kafka",
            "messaging.destination.name": row["topic"],
            "correlation_id": headers.get("correlation_id", ""),
            "event_type": headers.get("event_type", ""),
        }
        if key is not None:
            attributes["messaging.kafka.message.key"] = key
        span = tracer().start_span(
            f"publish {row['topic']}",
            context=context_from_headers(headers),
            kind=trace.SpanKind.PRODUCER,
            attributes=attributes,
        )
        headers.pop("traceparent", None)
        headers.pop("tracestate", None)
        propagate.inject(headers, context=trace.set_span_in_context(span))
        message = OutgoingMessage(row["topic"], key, bytes(row["value"]), headers)
        return message, span
