"""Applying one partition's records, in order: well-formed ones join the group commit
(:mod:`shared.consuming.group_commit`), and a record that is not even an envelope is
dead-lettered where it stands.

When the group's transaction fails, each partition's run is applied in a transaction of its
own and, when that fails too, one record at a time (:mod:`shared.consuming.retries`), so the
record at fault is retried and dead-lettered alone while the others go through (its failed
attempts are counted in the database, so a rebalance does not start them again). Up to
``CONSUMER_CONCURRENCY`` transactions run at once (the group's and the ones of partitions
applying on their own). Correlation, spans, metrics and logs are middleware
(:mod:`shared.consuming.middleware`), the same for every path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Generic

from aiokafka import ConsumerRecord

from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.group_commit import GroupCommit, Joined
from shared.consuming.middleware import compose, measured, traced
from shared.consuming.processing import Delivery, EventProcessor
from shared.consuming.retries import AbandonedError, DeadLettering, HandOver, Retries
from shared.consuming.routing import U
from shared.contracts.envelope import Envelope, MalformedEnvelopeError, parse_envelope
from shared.kafka import decode_headers
from shared.observability.metrics import CONSUMER_TRANSACTION_EVENTS
from shared.persistence.db import TRANSIENT_DATABASE_ERRORS
from shared.service.settings import ServiceSettings

# The consumer's lines go under one logger, whichever of its parts writes them.
log = logging.getLogger("shared.consuming.consumer")


def _delivery(envelope: Envelope, record: ConsumerRecord, headers: dict[str, str]) -> Delivery:
    return Delivery(
        envelope,
        record.topic,
        record.partition,
        record.offset,
        headers,
        record.key,
        record.value,
        record.timestamp,
    )


class Applier(Generic[U]):
    """Applies or dead-letters one partition's records, in order."""

    def __init__(
        self,
        settings: ServiceSettings,
        processor: EventProcessor[U],
        dead_letters: DeadLetterSink,
        hand_over: HandOver,
    ) -> None:
        self._batch = settings.consumer_batch
        self._service = settings.service_name
        self._processor = processor
        self._observe = compose([traced(processor.handles), measured(self._service)])
        self._turns = asyncio.Semaphore(settings.consumer_concurrency)
        self._group_commit = GroupCommit(self._apply_together)
        self._dead_letters = DeadLettering(self._service, dead_letters, hand_over)
        self._retries = Retries(settings, processor, self._turns, self._dead_letters, hand_over)

    async def commit_groups(self) -> None:
        """Run the group commit, until cancelled."""
        await self._group_commit.run()

    async def apply(self, records: Sequence[ConsumerRecord]) -> int:
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
                    await self._dead_letters.record(record, headers, str(exc), attempts=1)
                except AbandonedError:
                    return done
                done += 1
                continue
            run.append(_delivery(envelope, record, headers))
        return done + await self._apply_run(run)

    async def _apply_run(self, run: Sequence[Delivery]) -> int:
        """Well-formed records: in one transaction with other partitions' runs, or, when that
        fails, in one of their own, or, when that fails too, one by one."""
        if self._batch and await self._applied_in_a_transaction(run):
            return len(run)
        return await self._apply_one_by_one(run)

    async def _applied_in_a_transaction(self, run: Sequence[Delivery]) -> bool:
        joined = await self._group_commit.join(run)
        if joined is Joined.COMMITTED:
            return True
        if joined is Joined.FAILED_WITH_OTHERS and len(run) > 1:
            try:
                await self._apply_together(run)
                return True
            except TRANSIENT_DATABASE_ERRORS as exc:
                log.warning("batch of %d not applied (%s); one at a time", len(run), exc)
            except Exception as exc:
                log.info("batch of %d rolled back (%r); one at a time", len(run), exc)
        return False

    async def _apply_one_by_one(self, run: Sequence[Delivery]) -> int:
        for done, delivery in enumerate(run):
            observation = self._observe(delivery)
            try:
                with observation.active():
                    outcome = await self._retries.process(delivery, observation)
            except AbandonedError:
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
