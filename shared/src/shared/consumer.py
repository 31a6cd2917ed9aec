"""The Kafka side of a consumer: fetch, hand each record to the EventProcessor, commit.

Offsets are committed manually and only for records whose transaction committed (or that
were dead-lettered), and only for partitions still assigned. A rebalance waits for the record
in progress, commits what is done and drops what was fetched for revoked partitions. A crash
between the database commit and the offset commit redelivers the record; the dedup row makes
that harmless. (Storing offsets in Postgres would avoid the redelivery, but the dedup row is
needed anyway for producer retries and replays, so Kafka-committed offsets are enough.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Generic

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from shared.correlation import correlated
from shared.db import TRANSIENT_DATABASE_ERRORS
from shared.deadletter import DeadLetter, DeadLetterSink
from shared.envelope import MalformedEnvelopeError, parse_envelope
from shared.kafka import decode_headers, new_consumer
from shared.metrics import CONSUMER_LAG, DEDUP_HITS, EVENTS_CONSUMED, HANDLER_SECONDS
from shared.processing import Delivery, EventProcessor, Outcome, PermanentError
from shared.routing import U
from shared.settings import ServiceSettings
from shared.tracing import context_from_headers, tracer

log = logging.getLogger(__name__)


class _AbandonedError(Exception):
    """A rebalance is taking the partitions while this record waits on a retry: let go of
    it (its offset is not committed) so the group is not stalled; the new owner applies it."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner[U]) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._runner.on_assigned(set(assigned))
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class ConsumerRunner(Generic[U]):
    """Runs until cancelled; reconnects to Kafka with backoff when the broker goes away."""

    def __init__(
        self,
        settings: ServiceSettings,
        processor: EventProcessor[U],
        topics: list[str],
        dead_letters: DeadLetterSink,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._topics = topics
        self._dead_letters = dead_letters
        self._service = settings.service_name
        self._lock = asyncio.Lock()  # held while a record is processed; rebalance waits on it
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        # aiokafka still lists revoked partitions in assignment() until the group has synced,
        # so the runner keeps its own record of what it handed over.
        self._revoked: set[TopicPartition] = set()
        self._handing_over = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.running = False

    async def run(self) -> None:
        backoff = 0.5
        while True:
            consumer = new_consumer(self._settings)
            try:
                await consumer.start()
                consumer.subscribe(self._topics, listener=_Rebalance(self))
                self._consumer = consumer
                self.running = True
                backoff = 0.5
                await self._consume(consumer)
            except KafkaError as exc:
                log.warning("consumer lost Kafka (%s); retrying in %.1fs", exc, backoff)
            finally:
                self.running = False
                await self._shutdown(consumer)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await asyncio.shield(self._commit(consumer))
        except Exception as exc:  # a dead broker; the records will be redelivered
            log.warning("final offset commit failed: %s", exc)
        finally:
            self._consumer = None
            self._done.clear()
            await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=200)
            for tp, records in batches.items():
                for record in records:
                    async with self._lock:
                        if tp in self._revoked or tp not in consumer.assignment():
                            break  # revoked while we worked: its new owner will process it
                        if not await self._handle(record):
                            break  # abandoned to a rebalance
                        self._done[tp] = record.offset + 1
                        lag = (consumer.highwater(tp) or 0) - (record.offset + 1)
                    CONSUMER_LAG.labels(self._service, tp.topic, str(tp.partition)).set(max(lag, 0))
            await self._commit(consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        if self._settings.pitfall_auto_commit or not self._done:
            return
        assigned = consumer.assignment() - self._revoked
        offsets = {tp: offset for tp, offset in self._done.items() if tp in assigned}
        self._done.clear()
        if offsets:
            try:
                await consumer.commit(offsets)
            except CommitFailedError as exc:  # a rebalance took them; they are redelivered
                log.warning("offset commit refused after a rebalance: %s", exc)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._handing_over.set()  # a record stuck in a retry loop lets go
        async with self._lock:  # let the record in progress finish, then hand over
            self._handing_over.clear()
            if self._consumer is not None:
                await self._commit(self._consumer)  # what is done, before the new owner starts
            self._revoked |= revoked
            for tp in revoked:
                self._done.pop(tp, None)
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(self._service, tp.topic, str(tp.partition))

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= assigned

    async def _handle(self, record: ConsumerRecord) -> bool:
        """Apply or dead-letter one record; False when a rebalance made us let go of it."""
        headers = decode_headers(record.headers)
        try:
            envelope = parse_envelope(record.value)
        except MalformedEnvelopeError as exc:
            try:
                return await self._dead_letter(record, headers, str(exc), attempts=1)
            except _AbandonedError:
                return False
        delivery = Delivery(envelope, record.topic, record.partition, record.offset, headers)
        span_name = f"process {envelope.event_type}"
        with (
            correlated(envelope.correlation_id, str(envelope.event_id)),
            tracer().start_as_current_span(
                span_name, context=context_from_headers(headers), kind=trace.SpanKind.CONSUMER
            ) as span,
        ):
            span.set_attribute("messaging.system", "kafka")
            span.set_attribute("messaging.destination.name", record.topic)
            span.set_attribute("messaging.kafka.partition", record.partition)
            span.set_attribute("messaging.kafka.offset", record.offset)
            span.set_attribute("event_id", str(envelope.event_id))
            span.set_attribute("event_type", envelope.event_type)
            span.set_attribute("aggregate_id", envelope.aggregate_id)
            span.set_attribute("event.sequence", envelope.sequence)
            try:
                outcome = await self._process_with_retries(record, headers, delivery)
            except _AbandonedError:
                span.set_attribute("outcome", "abandoned")
                return False
            span.set_attribute("outcome", outcome)
        return True

    async def _process_with_retries(
        self, record: ConsumerRecord, headers: dict[str, str], delivery: Delivery
    ) -> str:
        attempt = 0
        infra_backoff = 0.5
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                outcome = await self._processor.process(delivery)
            except PermanentError as exc:
                await self._dead_letter(record, headers, str(exc), attempts=attempt)
                return "dead_lettered"
            except TRANSIENT_DATABASE_ERRORS as exc:
                attempt -= 1  # not the event's fault: wait for the database, forever
                self._let_go_on_rebalance()
                log.warning("database unavailable (%s); retrying in %.1fs", exc, infra_backoff)
                await asyncio.sleep(infra_backoff)
                infra_backoff = min(infra_backoff * 2, 10.0)
                continue
            except Exception as exc:
                if attempt >= self._settings.consumer_max_attempts:
                    await self._dead_letter(
                        record, headers, f"{type(exc).__name__}: {exc}", attempts=attempt
                    )
                    return "dead_lettered"
                self._let_go_on_rebalance()
                delay = self._settings.consumer_retry_backoff_seconds * 2 ** (attempt - 1)
                log.warning("attempt %d failed (%r); retrying in %.2fs", attempt, exc, delay)
                await asyncio.sleep(delay)
                continue
            elapsed = time.perf_counter() - started
            HANDLER_SECONDS.labels(self._service, record.topic).observe(elapsed)
            envelope = delivery.envelope
            log.info(
                "%s %s #%d from %s",
                outcome.value,
                envelope.event_type,
                envelope.sequence,
                envelope.source,
                extra={
                    "fields": {
                        "event_id": str(envelope.event_id),
                        "event_type": envelope.event_type,
                        "aggregate_id": envelope.aggregate_id,
                        "sequence": envelope.sequence,
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "outcome": outcome.value,
                        "elapsed_ms": round(elapsed * 1000, 2),
                    }
                },
            )
            EVENTS_CONSUMED.labels(self._service, record.topic, outcome).inc()
            if outcome is Outcome.DUPLICATE:
                DEDUP_HITS.labels(self._service, record.topic).inc()
            return outcome.value

    def _let_go_on_rebalance(self) -> None:
        if self._handing_over.is_set():
            raise _AbandonedError

    async def _dead_letter(
        self, record: ConsumerRecord, headers: dict[str, str], error: str, attempts: int
    ) -> bool:
        span = trace.get_current_span()  # the processing span, when there is one
        span.set_attribute("outcome", "dead_lettered")
        span.set_attribute("dead_letter.error", error[:500])
        span.set_status(Status(StatusCode.ERROR, error[:200]))
        letter = DeadLetter(
            self._service,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.value,
            headers,
            error,
            attempts,
        )
        backoff = 0.5
        while True:  # the offset must not move past a letter that was not kept
            try:
                await self._dead_letters.send(letter)
                break
            except (KafkaError, *TRANSIENT_DATABASE_ERRORS) as exc:
                self._let_go_on_rebalance()
                log.warning("dead-lettering failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        EVENTS_CONSUMED.labels(self._service, record.topic, "dead_lettered").inc()
        return True
