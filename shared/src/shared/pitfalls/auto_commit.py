"""``PITFALL_AUTO_COMMIT``: Kafka commits offsets on its own timer, before the work is done.

The Kafka client commits the offsets of what it fetched every 100 ms, whatever the handler
did with it. A consumer that dies after such a commit and before its database commit loses
those records: its successor starts after them, and nobody applies them. The runner's own
commits, of what is done only (:class:`~shared.consuming.offsets.CommitWhatIsDone`), are off.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.consuming.offsets import OffsetPolicy


class KafkaAutoCommits(OffsetPolicy):
    kafka_auto_commit_interval_ms: int | None = 100

    def done(self, tp: TopicPartition, next_offset: int) -> None:
        pass  # Kafka commits what was fetched, done or not

    async def commit(self, consumer: AIOKafkaConsumer, owned: Set[TopicPartition]) -> None:
        pass

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        pass

    def forget_all(self) -> None:
        pass
