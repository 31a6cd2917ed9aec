"""Retries: one record applied on its own, again and again, until it is applied or
dead-lettered.

A failed attempt is counted in the database, per record, and retried after
``CONSUMER_RETRY_BACKOFF_SECONDS``, doubled each time; after ``CONSUMER_MAX_ATTEMPTS`` (or at
once, for a :class:`~shared.consuming.processing.PermanentError`) the record is
dead-lettered and its offset moves on. What is not the event's fault is not counted: a
database outage is waited out, and a lost deadlock is run again (two transactions that lock
shared rows, the stock of one SKU, in opposite orders deadlock; PostgreSQL aborts one).

A record waiting out its backoff lets go when a rebalance hands its partition over (see
:class:`HandOver`): its offset is not committed, and the new owner applies it, without
starting its count again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Generic

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError

from shared.consuming.deadletter import DeadLetter, DeadLetterSink
from shared.consuming.processing import (
    Delivery,
    EventObservation,
    EventProcessor,
    Outcome,
    PermanentError,
)
from shared.consuming.routing import U
from shared.observability.metrics import EVENTS_CONSUMED
from shared.persistence.db import DATABASE_ERRORS, LOST_RACE_ERRORS, TRANSIENT_DATABASE_ERRORS
from shared.service.settings import ServiceSettings

# The consumer's lines go under one logger, whichever of its parts writes them.
log = logging.getLogger("shared.consuming.consumer")


class AbandonedError(Exception):
    """A rebalance is taking the partitions while this record waits on a retry: let go of
    it (its offset is not committed) so the group is not stalled; the new owner applies it."""


class HandOver:
    """Whether a rebalance is handing partitions over, for the records waiting on a retry."""

    def __init__(self) -> None:
        self._under_way = asyncio.Event()

    @contextlib.contextmanager
    def under_way(self) -> Iterator[None]:
        self._under_way.set()
        try:
            yield
        finally:
            self._under_way.clear()

    async def wait(self, delay: float) -> None:
        """Sleep before a retry, unless a rebalance hands the partition over first: then
        let go of the record at once (raises AbandonedError)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._under_way.wait(), delay)
        if self._under_way.is_set():
            raise AbandonedError


class DeadLettering:
    """Keeps dead letters; the offset must not move past a letter that was not kept."""

    def __init__(self, service: str, sink: DeadLetterSink, hand_over: HandOver) -> None:
        self._service = service
        self._sink = sink
        self._hand_over = hand_over

    async def delivery(
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

    async def record(
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
                await self._sink.send(letter)
                return
            except (KafkaError, *TRANSIENT_DATABASE_ERRORS) as exc:
                log.warning("dead-lettering failed (%s); retrying in %.1fs", exc, backoff)
                await self._hand_over.wait(backoff)
                backoff = min(backoff * 2, 10.0)


class Retries(Generic[U]):
    """Applies one record, in a transaction of its own, until it is applied or dead-lettered."""

    def __init__(
        self,
        settings: ServiceSettings,
        processor: EventProcessor[U],
        turns: asyncio.Semaphore,
        dead_letters: DeadLettering,
        hand_over: HandOver,
    ) -> None:
        self._max_attempts = settings.consumer_max_attempts
        self._backoff = settings.consumer_retry_backoff_seconds
        self._processor = processor
        self._turns = turns
        self._dead_letters = dead_letters
        self._hand_over = hand_over

    async def process(self, delivery: Delivery, observation: EventObservation) -> Outcome | None:
        """The outcome, or None when the event was dead-lettered (and observed as such).
        Raises AbandonedError when a rebalance took the partition meanwhile.

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
                await self._hand_over.wait(random.uniform(0.0, 0.05))
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
            if permanent or attempts >= self._max_attempts:
                await self._dead_letters.delivery(delivery, observation, error, attempts)
                await self._forget_failures(delivery)
                return None
            delay = self._backoff * 2 ** (attempts - 1)
            log.warning("attempt %d failed (%s); retrying in %.2fs", attempts, error, delay)
            await self._hand_over.wait(delay)

    async def _wait_for_the_database(self, exc: Exception, backoff: float) -> float:
        """Not the event's fault: wait for the database, forever. Returns the next backoff."""
        log.warning("database unavailable (%s); retrying in %.1fs", exc, backoff)
        await self._hand_over.wait(backoff)
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
