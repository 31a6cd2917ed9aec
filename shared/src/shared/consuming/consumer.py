"""The Kafka side of a consumer: fetch, hand each partition's records on, commit offsets.

One handler's path, part by part:

- :mod:`shared.consuming.consumer` (here): the Kafka loop. Polls, reconnects with backoff
  when the broker goes away, hands partitions over at a rebalance, shuts down within bounds.
- :mod:`shared.consuming.partitions`: each partition's records queue up and are applied in
  order by a task of its own; pausing, the linger for ignored types, the rate limit.
- :mod:`shared.consuming.applying`: one partition's records, applied in the group's
  transaction (:mod:`shared.consuming.group_commit`), else in one of their own, else one by
  one (:mod:`shared.consuming.retries`: retries, dead letters, letting go at a rebalance).
- :mod:`shared.consuming.processing`: one transaction's dedup, sequence check and handlers.
- :mod:`shared.consuming.offsets`: which offsets are committed, when, and by whom.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Generic

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from shared.consuming.applying import Applier
from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.offsets import Assignment, CommitWhatIsDone, OffsetPolicy
from shared.consuming.partitions import Partitions
from shared.consuming.processing import EventProcessor
from shared.consuming.retries import HandOver
from shared.consuming.routing import U
from shared.kafka import new_consumer, stop_consumer_within
from shared.observability.metrics import CONSUMER_FETCHES
from shared.service.settings import ServiceSettings

log = logging.getLogger(__name__)

# The longest the final offset commit, then leaving the group, may take at shutdown.
SHUTDOWN_STEP_SECONDS = 1.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner[U]) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._runner.on_assigned(set(assigned))
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


class ConsumerRunner(Generic[U]):
    """Runs until cancelled; reconnects to Kafka with backoff when the broker goes away.

    ``offsets`` decides which offsets are committed and by whom: by default only those of
    records done (:class:`~shared.consuming.offsets.CommitWhatIsDone`)."""

    def __init__(
        self,
        settings: ServiceSettings,
        processor: EventProcessor[U],
        topics: list[str],
        dead_letters: DeadLetterSink,
        *,
        offsets: OffsetPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._offsets = offsets if offsets is not None else CommitWhatIsDone()
        self._assignment = Assignment()
        self._hand_over = HandOver()
        self._applier = Applier(settings, processor, dead_letters, self._hand_over)
        self._partitions = Partitions(
            settings, processor.handles, self._applier.apply, self._assignment, self._offsets
        )
        self._consumer: AIOKafkaConsumer | None = None
        self.running = False

    async def run(self) -> None:
        committer = asyncio.create_task(self._applier.commit_groups())
        try:
            await self._run()
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            consumer = new_consumer(
                self._settings,
                auto_commit_interval_ms=self._offsets.kafka_auto_commit_interval_ms,
            )
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

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        interval = self._settings.consumer_commit_interval_seconds
        committed = time.monotonic()
        fetches = CONSUMER_FETCHES.labels(self._settings.service_name)
        while True:
            wanted = await self._partitions.allowance(consumer)
            if not wanted:
                continue  # throttled: no tokens yet
            batches = await consumer.getmany(timeout_ms=200, max_records=wanted)
            if batches:
                fetches.inc()
            self._partitions.queue(consumer, batches)
            self._partitions.start_due(consumer)
            if time.monotonic() - committed >= interval:
                await self._commit(consumer)
                committed = time.monotonic()

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        await self._offsets.commit(consumer, self._assignment.owned(consumer))

    async def _shutdown(self, consumer: AIOKafkaConsumer) -> None:
        await self._partitions.stop()
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
            self._offsets.forget_all()
            await stop_consumer_within(consumer, SHUTDOWN_STEP_SECONDS)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hand ``revoked`` over: what is done is committed before the new owner starts."""
        self._partitions.drop(revoked)  # not begun: the new owner fetches them
        with self._hand_over.under_way():  # a record stuck in a retry loop lets go
            await self._partitions.finish()  # let the records in progress finish
        if self._consumer is not None:
            await self._commit(self._consumer)  # what is done, before the new owner starts
        self._assignment.handed_over(revoked)
        self._offsets.forget(revoked)
        self._partitions.forget(revoked)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assignment.assigned(assigned)
