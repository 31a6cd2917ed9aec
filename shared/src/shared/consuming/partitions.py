"""Partition scheduling: what each partition has fetched waits in a queue of its own, and a
task of its own applies it.

Each partition's records are worked on in a task of their own, in order, and the loop keeps
polling: records fetched meanwhile queue up behind the ones in progress and go in the next
transaction. A partition is paused only once a poll's worth is queued (the rest waits in Kafka,
memory stays bounded). So a record waiting out its retry backoff, or a database outage, holds
only its own partition, and the consumer keeps polling well within ``max_poll_interval_ms``.
(Pausing a partition for every batch would cost a fetch round per batch: the broker holds a
fetch up to ``fetch_max_wait_ms`` for the partitions in it, and a resumed one waits for the
next.)

Records of types the service has no handler for only move their streams on: when a partition's
queue holds nothing else, it waits up to ``CONSUMER_IGNORED_LINGER_SECONDS`` for a record the
service handles, and they go in that one's transaction (a third of the records a service
receives are such, and each cost a transaction of its own).

A rate limit (``CONSUMER_RATE_LIMIT_PER_SECOND``, off by default) is a token bucket: a poll
asks for at most as many records as there are tokens, and while there are none every
assigned partition is paused (no fetching, nothing buffered), so the backlog stays in Kafka
and memory stays flat; ``consumer_throttled`` and ``consumer_lag`` show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.consuming.offsets import Assignment, OffsetPolicy
from shared.consuming.ratelimit import TokenBucket
from shared.observability.metrics import (
    CONSUMER_LAG,
    CONSUMER_THROTTLED,
    CONSUMER_THROTTLED_SECONDS,
)
from shared.service.settings import ServiceSettings

# The consumer's lines go under one logger, whichever of its parts writes them.
log = logging.getLogger("shared.consuming.consumer")

# Applies one partition's records, in order; returns how many of them, from the first, are
# done (see shared.consuming.applying.Applier.apply).
Apply = Callable[[Sequence[ConsumerRecord]], Awaitable[int]]


def _event_type(record: ConsumerRecord) -> str | None:
    """The record's ``event_type`` header, None when it has none."""
    for key, value in record.headers or ():
        if key == "event_type":
            return (value or b"").decode(errors="replace")
    return None


class Throttle:
    """The rate limit: polls ask for no more records than there are tokens, and while there
    are none, every partition still owned is paused."""

    def __init__(self, settings: ServiceSettings, assignment: Assignment) -> None:
        rate = settings.consumer_rate_limit_per_second
        self._bucket = TokenBucket(rate, max(1.0, rate)) if rate > 0 else None
        self._limit = settings.consumer_max_poll_records
        self._service = settings.service_name
        self._assignment = assignment
        self._since: float | None = None  # when the partitions were paused for want of tokens

    @property
    def holding(self) -> bool:
        """Whether every partition is paused for want of tokens."""
        return self._since is not None

    async def allowance(
        self, consumer: AIOKafkaConsumer, full: Callable[[TopicPartition], bool]
    ) -> int:
        """How many records the next poll may ask for. None while there are no tokens: then
        after a short wait, with every partition paused (``full`` ones stay paused after)."""
        if self._bucket is None:
            return self._limit
        tokens = int(self._bucket.available())
        if tokens < 1:
            self._hold(consumer)
            await asyncio.sleep(min(self._bucket.wait_for(1), 0.2))
            return 0
        self._release(consumer, full)
        return min(self._limit, tokens)

    def took(self, count: int) -> None:
        """A poll fetched ``count`` records."""
        if self._bucket is not None:
            self._bucket.take(count)

    def _hold(self, consumer: AIOKafkaConsumer) -> None:
        """No tokens: pause every assigned partition (again, after a rebalance)."""
        consumer.pause(*self._assignment.owned(consumer))
        if self._since is None:
            self._since = time.monotonic()
            CONSUMER_THROTTLED.labels(self._service).set(1)

    def _release(self, consumer: AIOKafkaConsumer, full: Callable[[TopicPartition], bool]) -> None:
        if self._since is None:
            return
        CONSUMER_THROTTLED_SECONDS.labels(self._service).inc(time.monotonic() - self._since)
        CONSUMER_THROTTLED.labels(self._service).set(0)
        self._since = None
        for tp in self._assignment.owned(consumer):
            if not full(tp):  # else paused for a full queue
                consumer.resume(tp)


class Partitions:
    """The records each partition fetched and has not begun on, and the task applying them."""

    def __init__(
        self,
        settings: ServiceSettings,
        handles: Callable[[str], bool],
        apply: Apply,
        assignment: Assignment,
        offsets: OffsetPolicy,
    ) -> None:
        self._limit = settings.consumer_max_poll_records
        self._linger = settings.consumer_ignored_linger_seconds
        self._service = settings.service_name
        self._handles = handles
        self._apply = apply
        self._assignment = assignment
        self._offsets = offsets
        self._throttle = Throttle(settings, assignment)
        self._working: dict[TopicPartition, asyncio.Task[None]] = {}
        self._queued: dict[TopicPartition, list[ConsumerRecord]] = {}  # fetched, not begun
        self._queued_at: dict[TopicPartition, float] = {}  # when its queue last started

    async def allowance(self, consumer: AIOKafkaConsumer) -> int:
        """How many records the next poll may ask for; 0: none, poll again later."""
        return await self._throttle.allowance(consumer, self._full)

    def queue(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        """Queue what a poll fetched for the partitions still owned."""
        self._throttle.took(sum(len(records) for records in batches.values()))
        for tp, records in batches.items():
            if not self._assignment.owns(consumer, tp):
                continue  # revoked meanwhile: its new owner will process it
            if not self._queued.get(tp):
                self._queued_at[tp] = time.monotonic()
            queued = self._queued.setdefault(tp, [])
            queued.extend(records)
            if len(queued) >= self._limit:
                consumer.pause(tp)  # enough in hand; resumed when the queue is taken

    def start_due(self, consumer: AIOKafkaConsumer) -> None:
        """Start a task for each partition whose queue is due and that has none."""
        for tp, queued in self._queued.items():
            if tp not in self._working and self._due(tp, queued):
                self._working[tp] = asyncio.create_task(self._work(consumer, tp))

    def drop(self, revoked: Iterable[TopicPartition]) -> None:
        """Drop what is queued, not begun, for ``revoked``: the new owner fetches it."""
        for tp in revoked:
            self._queued.pop(tp, None)

    async def finish(self) -> None:
        """Wait for the records in progress."""
        await asyncio.gather(*self._working.values(), return_exceptions=True)

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        """``revoked`` were handed over: their lag is the new owner's to show."""
        for tp in revoked:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self._service, tp.topic, str(tp.partition))

    async def stop(self) -> None:
        """Drop what is queued and cancel the records in progress."""
        self._queued.clear()
        for task in self._working.values():
            task.cancel()
        await asyncio.gather(*self._working.values(), return_exceptions=True)
        self._working.clear()

    def _full(self, tp: TopicPartition) -> bool:
        return len(self._queued.get(tp, ())) >= self._limit

    def _due(self, tp: TopicPartition, queued: Sequence[ConsumerRecord]) -> bool:
        """Whether to start on ``tp``'s queue now. Records of types the service ignores
        only move their streams on; they wait (up to the linger) for a record it handles,
        so they ride in that one's transaction rather than each costing one."""
        if not queued:
            return False
        if len(queued) >= self._limit:
            return True
        if time.monotonic() - self._queued_at.get(tp, 0.0) >= self._linger:
            return True
        # A record with no type header may be poison: begun on at once, like a handled one.
        types = (_event_type(r) for r in queued)
        return any(t is None or self._handles(t) for t in types)

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
                    self._progressed(consumer, tp, records[done - 1].offset + 1)
                if done < len(records):  # let go of the rest: fetch again from the first one
                    self._queued.pop(tp, None)
                    if self._assignment.owns(consumer, tp):
                        consumer.seek(tp, records[done].offset)
                        self._resume(consumer, tp)  # paused if a poll's worth had queued
                    return
        finally:
            del self._working[tp]

    def _progressed(self, consumer: AIOKafkaConsumer, tp: TopicPartition, next_offset: int) -> None:
        self._offsets.done(tp, next_offset)
        lag = (consumer.highwater(tp) or 0) - next_offset
        CONSUMER_LAG.labels(self._service, tp.topic, str(tp.partition)).set(max(lag, 0))

    def _resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Resume ``tp`` unless the rate limit holds every partition paused."""
        if not self._throttle.holding:
            consumer.resume(tp)
