"""The outbox relay: publishes committed outbox rows to Kafka, in order, at least once.

- One active relay per service: it holds a PostgreSQL advisory lock on a dedicated
  connection. Standby instances retry the lock every second; when the leader dies its
  session ends, the lock is freed and a standby takes over within seconds. A single leader
  keeps per-aggregate order without coordinating partitions between relays.
- Rows are read in id order, published, and deleted only after the broker acknowledged
  the whole batch. No "highest id seen" cursor: a row whose transaction commits late is
  simply still in the table next time. The lease makes this relay the only one reading and
  deleting rows, so no transaction (and no row lock) is held while the broker is waited
  for: a broker outage holds back neither VACUUM nor anyone who touches the outbox.
- Woken in-process right after a unit of work of this process commits outbox rows
  (``wake``), and otherwise polls adaptively: every ``relay_poll_min_seconds`` while rows keep
  coming, backing off to ``relay_poll_interval_seconds`` when idle, so rows committed by other
  processes (another instance, an admin replay) go out too. Not ``LISTEN/NOTIFY``: a
  transaction that notifies takes a cluster-wide lock through its commit, which serialised
  every outbox-writing commit of the suite.
- A crash between publish and delete republishes the batch: consumers drop the duplicates by
  event id and sequence. With the idempotent producer, retries inside a batch keep order.
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
            await self._publish_until_cancelled(conn)
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
                idle_wait = self._settings.relay_poll_min_seconds
            else:
                idle_wait = min(idle_wait * 2, self._settings.relay_poll_interval_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle_wait)

    async def publish_batch(self) -> int:
        """Publish up to one batch; returns how many rows were published and deleted.

        Two short statements around the publish, no transaction across it: a broker that
        does not answer holds no connection, row lock or snapshot for up to
        ``PUBLISH_TIMEOUT``. Without the lease (tests) two callers may both publish a row:
        a duplicate, which consumers drop."""
        rows = await self._pool.fetch(
            """
            SELECT id, topic, message_key, value, headers, created_at FROM outbox
            ORDER BY id LIMIT $1
            """,
            self._settings.relay_batch_size,
        )
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
        await self._pool.execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
        )
        RELAY_PUBLISH_SECONDS.labels(self._service).observe(time.perf_counter() - started)
        acked = datetime.now(UTC)
        to_ack = OUTBOX_TO_ACK_SECONDS.labels(self._service)
        for row in rows:
            to_ack.observe((acked - row["created_at"]).total_seconds())
        for message in messages:
            EVENTS_PUBLISHED.labels(self._service, message.topic).inc()
        return len(rows)

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
