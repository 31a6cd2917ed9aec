"""Offsets: which partitions are still this member's, what is done in each, what is committed.

Offsets are committed manually and only for records whose transaction committed (or that
were dead-lettered), and only for partitions still assigned, at most every
``CONSUMER_COMMIT_INTERVAL_SECONDS`` (an offset commit per batch cost the broker as much CPU
as the rest of its work). A rebalance waits for the records in progress, commits what is
done and drops what was fetched for revoked partitions (``ConsumerRunner.on_revoked``).
A crash between the database commit and the offset commit redelivers the records; the
sequence check and dedup row make that harmless. (Storing offsets in Postgres would avoid the
redelivery, but the dedup row is needed anyway for producer retries and replays, so
Kafka-committed offsets are enough.)

Who commits which offsets is an :class:`OffsetPolicy`, chosen at the composition root:
:class:`CommitWhatIsDone` here, or the pitfall mode's Kafka auto-commit
(:mod:`shared.pitfalls.auto_commit`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Set
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError

# The consumer's lines go under one logger, whichever of its parts writes them.
log = logging.getLogger("shared.consuming.consumer")


class Assignment:
    """The partitions this member still owns. aiokafka still lists revoked partitions in
    ``assignment()`` until the group has synced, so the runner keeps its own record of what
    it handed over."""

    def __init__(self) -> None:
        self._revoked: set[TopicPartition] = set()

    def owned(self, consumer: AIOKafkaConsumer) -> set[TopicPartition]:
        assigned: set[TopicPartition] = consumer.assignment()
        return assigned - self._revoked

    def owns(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        return tp not in self._revoked and tp in consumer.assignment()

    def handed_over(self, revoked: Set[TopicPartition]) -> None:
        self._revoked |= revoked

    def assigned(self, assigned: Set[TopicPartition]) -> None:
        self._revoked -= assigned


class OffsetPolicy(Protocol):
    """Who commits which offsets. The runner tells the policy how far each partition is done,
    asks it to commit every ``CONSUMER_COMMIT_INTERVAL_SECONDS``, at a rebalance (before the
    new owner starts) and at shutdown, and has it forget the partitions handed over, and
    everything when the connection to Kafka ends."""

    @property
    def kafka_auto_commit_interval_ms(self) -> int | None:
        """Kafka itself commits the offsets fetched this often, done or not; None: never."""
        ...

    def done(self, tp: TopicPartition, next_offset: int) -> None:
        """The records of ``tp`` before ``next_offset`` are applied or dead-lettered."""
        ...

    async def commit(self, consumer: AIOKafkaConsumer, owned: Set[TopicPartition]) -> None:
        """Commit what there is to commit of the partitions in ``owned``, those still ours.
        Must not raise for a commit a rebalance refused (the records are redelivered)."""
        ...

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` were handed over: their progress is no longer ours to commit."""
        ...

    def forget_all(self) -> None:
        """The connection ended: a new one starts from the committed offsets."""
        ...


class CommitWhatIsDone(OffsetPolicy):
    """Commits, for each partition still owned, the offset after the last record done;
    Kafka commits nothing by itself."""

    kafka_auto_commit_interval_ms: int | None = None

    def __init__(self) -> None:
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition

    def done(self, tp: TopicPartition, next_offset: int) -> None:
        self._done[tp] = next_offset

    async def commit(self, consumer: AIOKafkaConsumer, owned: Set[TopicPartition]) -> None:
        if not self._done:
            return
        offsets = {tp: offset for tp, offset in self._done.items() if tp in owned}
        self._done.clear()
        if offsets:
            try:
                await consumer.commit(offsets)
            except CommitFailedError as exc:  # a rebalance took them; they are redelivered
                log.warning("offset commit refused after a rebalance: %s", exc)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._done.pop(tp, None)

    def forget_all(self) -> None:
        self._done.clear()
