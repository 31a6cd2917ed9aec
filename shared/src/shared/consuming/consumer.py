"""The Kafka side of a consumer: fetch, hand the records to the EventProcessor, commit.

Group commit: the records partitions have in hand are applied together, in one transaction
(one commit, a few set-based statements for the lot: see ``EventProcessor.process_batch``),
each partition's in order. One such transaction runs at a time; the runs handed in while it
is in flight go in the next one, so nothing waits to be grouped when the consumer keeps up,
and under load each transaction carries more. When one fails, each partition's run is applied
in a transaction of its own and, when that fails too, one record at a time, so the record at
fault is retried and dead-lettered alone while the others go through (its failed attempts
are counted in the database, so a rebalance does not start them again). Correlation, spans,
metrics and logs are middleware (:mod:`shared.consuming.middleware`), the same for every path.

Each partition's records are worked on in a task of their own, in order, and the loop keeps
polling: records fetched meanwhile queue up behind the ones in progress and go in the next
transaction. A partition is paused only once a poll's worth is queued (the rest waits in Kafka,
memory stays bounded). So a record waiting out its retry backoff, or a database outage, holds
only its own partition, and the consumer keeps polling well within ``max_poll_interval_ms``.
(Pausing a partition for every batch would cost a fetch round per batch: the broker holds a
fetch up to ``fetch_max_wait_ms`` for the partitions in it, and a resumed one waits for the
next.) Up to ``CONSUMER_CONCURRENCY`` transactions run at once (the group's and the ones of
partitions applying on their own). Two of them that lock shared rows (the stock of one SKU)
in opposite orders deadlock; PostgreSQL aborts one, and it is run again (not counted as a
failed attempt: losing a race is not the event's fault).

Records of types the service has no handler for only move their streams on: when a partition's
queue holds nothing else, it waits up to ``CONSUMER_IGNORED_LINGER_SECONDS`` for a record the
service handles, and they go in that one's transaction (a third of the records a service
receives are such, and each cost a transaction of its own).

Offsets are committed manually and only for records whose transaction committed (or that
were dead-lettered), and only for partitions still assigned, at most every
``CONSUMER_COMMIT_INTERVAL_SECONDS`` (an offset commit per batch cost the broker as much CPU
as the rest of its work). A rebalance waits for the
records in progress, commits what is done and drops what was fetched for revoked partitions.
A crash between the database commit and the offset commit redelivers the records; the
sequence check and dedup row make that harmless. (Storing offsets in Postgres would avoid the
redelivery, but the dedup row is needed anyway for producer retries and replays, so
Kafka-committed offsets are enough.)

A rate limit (``CONSUMER_RATE_LIMIT_PER_SECOND``, off by default) is a token bucket: a poll
asks for at most as many records as there are tokens, and while there are none every
assigned partition is paused (no fetching, nothing buffered), so the backlog stays in Kafka
and memory stays flat; ``consumer_throttled`` and ``consumer_lag`` show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from shared.consuming.deadletter import DeadLetter, DeadLetterSink
from shared.consuming.middleware import compose, measured, traced
from shared.consuming.processing import (
    Delivery,
    EventObservation,
    EventProcessor,
    Outcome,
    PermanentError,
)
from shared.consuming.ratelimit import TokenBucket
from shared.consuming.routing import U
from shared.contracts.envelope import MalformedEnvelopeError, parse_envelope
from shared.kafka import decode_headers, new_consumer, stop_consumer_within
from shared.observability.metrics import (
    CONSUMER_LAG,
    CONSUMER_THROTTLED,
    CONSUMER_THROTTLED_SECONDS,
    CONSUMER_TRANSACTION_EVENTS,
    EVENTS_CONSUMED,
)
from shared.persistence.db import DATABASE_ERRORS, LOST_RACE_ERRORS, TRANSIENT_DATABASE_ERRORS
from shared.service.settings import ServiceSettings

log = logging.getLogger(__name__)

# The longest the final offset commit, then leaving the group, may take at shutdown.
SHUTDOWN_STEP_SECONDS = 1.0


def _event_type(record: ConsumerRecord) -> str | None:
    """The record's ``event_type`` header, None when it has none."""
    for key, value in record.headers or ():
        if key == "event_type":
            return (value or b"").decode(errors="replace")
    return None


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


class _Joined(enum.Enum):
    COMMITTED = "committed"
    FAILED_ALONE = "failed alone"
    FAILED_WITH_OTHERS = "failed with others"


class _GroupCommit:
    """Runs of records that partitions' tasks hand in while a transaction is in flight go
    together in the next one: the records of many partitions, each partition's in order, in
    one transaction. Nothing waits to be grouped: a run handed in while the transaction
    slot is free starts at once, alone, so grouping happens only under load, when it saves
    the most. If the transaction fails, every run in it hears so, and is applied on its own
    (where a poison record is isolated, retried and dead-lettered)."""

    def __init__(self, apply: Callable[[Sequence[Delivery]], Awaitable[None]]) -> None:
        self._apply = apply
        self._waiting: list[tuple[Sequence[Delivery], asyncio.Future[_Joined]]] = []
        self._handed_in = asyncio.Event()

    async def join(self, run: Sequence[Delivery]) -> _Joined:
        joined: asyncio.Future[_Joined] = asyncio.get_running_loop().create_future()
        self._waiting.append((run, joined))
        self._handed_in.set()
        return await joined

    async def run(self) -> None:
        try:
            while True:
                await self._handed_in.wait()
                self._handed_in.clear()
                taken, self._waiting = self._waiting, []
                taken = [(run, joined) for run, joined in taken if not joined.done()]
                if taken:
                    await self._commit(taken)
        finally:
            for _, joined in self._waiting:
                joined.cancel()

    async def _commit(
        self, taken: list[tuple[Sequence[Delivery], asyncio.Future[_Joined]]]
    ) -> None:
        try:
            await self._apply([delivery for run, _ in taken for delivery in run])
            outcome = _Joined.COMMITTED
        except Exception as exc:
            outcome = _Joined.FAILED_ALONE if len(taken) == 1 else _Joined.FAILED_WITH_OTHERS
            log.info("transaction of %d run(s) rolled back (%r); each on its own", len(taken), exc)
        for _, joined in taken:
            if not joined.done():
                joined.set_result(outcome)


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
        self._observe = compose([traced(processor.handles), measured(self._service)])
        self._turns = asyncio.Semaphore(settings.consumer_concurrency)
        self._group_commit = _GroupCommit(self._apply_together)
        self._working: dict[TopicPartition, asyncio.Task[None]] = {}
        self._queued: dict[TopicPartition, list[ConsumerRecord]] = {}  # fetched, not begun
        self._queued_at: dict[TopicPartition, float] = {}  # when its queue last started
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        # aiokafka still lists revoked partitions in assignment() until the group has synced,
        # so the runner keeps its own record of what it handed over.
        self._revoked: set[TopicPartition] = set()
        self._handing_over = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.running = False
        rate = settings.consumer_rate_limit_per_second
        self._bucket = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None
        self._throttled_since: float | None = None

    async def run(self) -> None:
        committer = asyncio.create_task(self._group_commit.run())
        try:
            await self._run()
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)

    async def _run(self) -> None:
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
        self._queued.clear()
        for task in self._working.values():
            task.cancel()
        await asyncio.gather(*self._working.values(), return_exceptions=True)
        self._working.clear()
        # Bounded: a broker that does not answer must not hold up shutdown. What is not
        # committed is redelivered and dropped as duplicates.
        committing = asyncio.ensure_future(self._commit(consumer))
        try:
            await asyncio.wait_for(asyncio.shield(committing), SHUTDOWN_STEP_SECONDS)
        except Exception as exc:  # a dead broker; the records will be redelivered
            committing.cancel()
            log.warning("final offset commit failed: %r", exc)
        finally:
            self._consumer = None
            self._done.clear()
            await stop_consumer_within(consumer, SHUTDOWN_STEP_SECONDS)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        limit = self._settings.consumer_max_poll_records
        interval = self._settings.consumer_commit_interval_seconds
        committed = time.monotonic()
        while True:
            wanted = limit
            if self._bucket is not None:
                tokens = int(self._bucket.available())
                if tokens < 1:
                    self._throttle(consumer)
                    await asyncio.sleep(min(self._bucket.wait_for(1), 0.2))
                    continue
                self._unthrottle(consumer)
                wanted = min(limit, tokens)
            batches = await consumer.getmany(timeout_ms=200, max_records=wanted)
            if self._bucket is not None:
                self._bucket.take(sum(len(records) for records in batches.values()))
            for tp, records in batches.items():
                if not self._owns(consumer, tp):
                    continue  # revoked meanwhile: its new owner will process it
                if not self._queued.get(tp):
                    self._queued_at[tp] = time.monotonic()
                queued = self._queued.setdefault(tp, [])
                queued.extend(records)
                if len(queued) >= limit:
                    consumer.pause(tp)  # enough in hand; resumed when the queue is taken
            for tp, queued in self._queued.items():
                if tp not in self._working and self._due(tp, queued):
                    self._working[tp] = asyncio.create_task(self._work(consumer, tp))
            if time.monotonic() - committed >= interval:
                await self._commit(consumer)
                committed = time.monotonic()

    def _due(self, tp: TopicPartition, queued: Sequence[ConsumerRecord]) -> bool:
        """Whether to start on ``tp``'s queue now. Records of types the service ignores
        only move their streams on; they wait (up to the linger) for a record it handles,
        so they ride in that one's transaction rather than each costing one."""
        if not queued:
            return False
        if len(queued) >= self._settings.consumer_max_poll_records:
            return True
        linger = self._settings.consumer_ignored_linger_seconds
        if time.monotonic() - self._queued_at.get(tp, 0.0) >= linger:
            return True
        # A record with no type header may be poison: begun on at once, like a handled one.
        types = (_event_type(r) for r in queued)
        return any(t is None or self._processor.handles(t) for t in types)

    def _throttle(self, consumer: AIOKafkaConsumer) -> None:
        """No tokens: pause every assigned partition (again, after a rebalance)."""
        consumer.pause(*(consumer.assignment() - self._revoked))
        if self._throttled_since is None:
            self._throttled_since = time.monotonic()
            CONSUMER_THROTTLED.labels(self._service).set(1)

    def _unthrottle(self, consumer: AIOKafkaConsumer) -> None:
        if self._throttled_since is None:
            return
        CONSUMER_THROTTLED_SECONDS.labels(self._service).inc(
            time.monotonic() - self._throttled_since
        )
        CONSUMER_THROTTLED.labels(self._service).set(0)
        self._throttled_since = None
        limit = self._settings.consumer_max_poll_records
        for tp in consumer.assignment() - self._revoked:
            if len(self._queued.get(tp, ())) < limit:  # else paused for a full queue
                consumer.resume(tp)

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Resume ``tp`` unless the rate limit holds every partition paused."""
        if self._throttled_since is None:
            consumer.resume(tp)

    def _owns(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        return tp not in self._revoked and tp in consumer.assignment()

    async def _work(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Apply what is queued for ``tp``, in order, until nothing is."""
        try:
            while records := self._queued.pop(tp, None):
                if tp in consumer.paused():
                    self._resume(consumer, tp)
                try:
                    done = await self._apply(records)
                except Exception:  # a bug here must not stop the partition for good
                    log.exception("applying %s[%d] failed; fetching again", *tp)
                    done = 0
                if done:
                    self._done[tp] = records[done - 1].offset + 1
                    lag = (consumer.highwater(tp) or 0) - self._done[tp]
                    CONSUMER_LAG.labels(self._service, tp.topic, str(tp.partition)).set(max(lag, 0))
                if done < len(records):  # let go of the rest: fetch again from the first one
                    self._queued.pop(tp, None)
                    if self._owns(consumer, tp):
                        consumer.seek(tp, records[done].offset)
                        self._resume(consumer, tp)  # paused if a poll's worth had queued
                    return
        finally:
            del self._working[tp]

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
        for tp in revoked:
            self._queued.pop(tp, None)  # not begun: the new owner fetches them
        self._handing_over.set()  # a record stuck in a retry loop lets go
        try:  # let the records in progress finish, then hand over
            await asyncio.gather(*self._working.values(), return_exceptions=True)
        finally:
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

    async def _apply(self, records: Sequence[ConsumerRecord]) -> int:
        """Apply or dead-letter the records of one partition, in order; returns how many of
        them, from the first, are done (fewer than all when a rebalance made us let go)."""
        done = 0
        run: list[Delivery] = []
        for record in records:
            headers = decode_headers(record.headers)
            try:
                envelope = parse_envelope(record.value)
            except MalformedEnvelopeError as exc:
                applied = await self._apply_run(run)
                done += applied
                if applied < len(run):
                    return done
                run = []
                try:
                    await self._dead_letter(record, headers, str(exc), attempts=1)
                except _AbandonedError:
                    return done
                done += 1
                continue
            run.append(
                Delivery(
                    envelope,
                    record.topic,
                    record.partition,
                    record.offset,
                    headers,
                    record.key,
                    record.value,
                    record.timestamp,
                )
            )
        return done + await self._apply_run(run)

    async def _apply_run(self, run: Sequence[Delivery]) -> int:
        """Well-formed records: in one transaction with other partitions' runs, or, when that
        fails, in one of their own, or, when that fails too, one by one."""
        if self._settings.consumer_batch:
            joined = await self._group_commit.join(run)
            if joined is _Joined.COMMITTED:
                return len(run)
            if joined is _Joined.FAILED_WITH_OTHERS and len(run) > 1:
                try:
                    await self._apply_together(run)
                    return len(run)
                except TRANSIENT_DATABASE_ERRORS as exc:
                    log.warning("batch of %d not applied (%s); one at a time", len(run), exc)
                except Exception as exc:
                    log.info("batch of %d rolled back (%r); one at a time", len(run), exc)
        for done, delivery in enumerate(run):
            observation = self._observe(delivery)
            try:
                with observation.active():
                    outcome = await self._process_with_retries(delivery, observation)
            except _AbandonedError:
                observation.undone("abandoned to a rebalance")
                return done
            if outcome is not None:
                observation.done(outcome)
                CONSUMER_TRANSACTION_EVENTS.labels(self._service).observe(1)
        return len(run)

    async def _apply_together(self, deliveries: Sequence[Delivery]) -> None:
        async with self._turns:
            await self._processor.process_batch(deliveries, self._observe)
        CONSUMER_TRANSACTION_EVENTS.labels(self._service).observe(len(deliveries))

    async def _process_with_retries(
        self, delivery: Delivery, observation: EventObservation
    ) -> Outcome | None:
        """The outcome, or None when the event was dead-lettered (and observed as such).

        Failed attempts are counted in the database, per record (``count_failure``), not in
        this loop: a rebalance or a restart hands the record to a member that begins this
        loop afresh, and under frequent rebalances a record that always fails would never
        reach ``consumer_max_attempts``. A database outage and a lost deadlock are not the
        event's fault, and are not counted."""
        counted = False  # this loop put failures on record: forget them when it is done
        infra_backoff = 0.5
        while True:
            try:
                async with self._turns:
                    outcome = await self._processor.process(delivery)
            except PermanentError as exc:
                error, permanent = str(exc), True
            except TRANSIENT_DATABASE_ERRORS as exc:
                infra_backoff = await self._wait_for_the_database(exc, infra_backoff)
                continue
            except LOST_RACE_ERRORS as exc:  # another partition's transaction won a deadlock
                log.info("transaction lost a race (%s); running it again", exc)
                await self._wait(random.uniform(0.0, 0.05))
                continue
            except Exception as exc:
                error, permanent = f"{type(exc).__name__}: {exc}", False
            else:
                if counted:
                    await self._forget_failures(delivery)
                return outcome
            try:
                attempts = await self._processor.count_failure(delivery, error)
            except TRANSIENT_DATABASE_ERRORS as exc:
                infra_backoff = await self._wait_for_the_database(exc, infra_backoff)
                continue
            counted = True
            if permanent or attempts >= self._settings.consumer_max_attempts:
                await self._dead_letter_delivery(delivery, observation, error, attempts)
                await self._forget_failures(delivery)
                return None
            delay = self._settings.consumer_retry_backoff_seconds * 2 ** (attempts - 1)
            log.warning("attempt %d failed (%s); retrying in %.2fs", attempts, error, delay)
            await self._wait(delay)

    async def _wait_for_the_database(self, exc: Exception, backoff: float) -> float:
        """Not the event's fault: wait for the database, forever. Returns the next backoff."""
        log.warning("database unavailable (%s); retrying in %.1fs", exc, backoff)
        await self._wait(backoff)
        return min(backoff * 2, 10.0)

    async def _forget_failures(self, delivery: Delivery) -> None:
        """Best effort: a count left behind is purged with the dedup rows, and meanwhile
        harmless (the record is done: a redelivery of it is a duplicate, or fails again and
        goes back to its dead letter)."""
        try:
            await self._processor.forget_failures(delivery)
        except DATABASE_ERRORS as exc:
            log.warning(
                "failed attempts at %s[%d]@%d left on record (%s)",
                delivery.topic,
                delivery.partition,
                delivery.offset,
                exc,
            )

    async def _wait(self, delay: float) -> None:
        """Sleep before a retry, unless a rebalance hands the partition over first: then
        let go of the record at once (raises _AbandonedError)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._handing_over.wait(), delay)
        if self._handing_over.is_set():
            raise _AbandonedError

    async def _dead_letter_delivery(
        self, delivery: Delivery, observation: EventObservation, error: str, attempts: int
    ) -> None:
        letter = DeadLetter.of_record(
            self._service,
            delivery.topic,
            delivery.partition,
            delivery.offset,
            delivery.timestamp,
            delivery.key,
            delivery.value if delivery.value is not None else delivery.envelope.to_bytes(),
            delivery.headers,
            error,
            attempts,
            delivery.envelope,
        )
        await self._keep(letter)
        observation.dead_lettered(error, attempts)

    async def _dead_letter(
        self, record: ConsumerRecord, headers: dict[str, str], error: str, attempts: int
    ) -> None:
        """A record that is not even an envelope: kept as it came."""
        letter = DeadLetter.of_record(
            self._service,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value,
            headers,
            error,
            attempts,
        )
        await self._keep(letter)
        EVENTS_CONSUMED.labels(self._service, record.topic, "dead_lettered").inc()
        log.error(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, error
        )

    async def _keep(self, letter: DeadLetter) -> None:
        backoff = 0.5
        while True:  # the offset must not move past a letter that was not kept
            # Only what can pass reaches here: the sink keeps a letter Kafka refuses for
            # good (too large, say) in the table, so it cannot stop the partition.
            try:
                await self._dead_letters.send(letter)
                return
            except (KafkaError, *TRANSIENT_DATABASE_ERRORS) as exc:
                log.warning("dead-lettering failed (%s); retrying in %.1fs", exc, backoff)
                await self._wait(backoff)
                backoff = min(backoff * 2, 10.0)
