"""Dead letters: what a consumer gave up on, kept with the reason and where it came from.

The record goes to ``<service>.dlq`` with its original key and value, and headers naming the
original topic, partition, offset, the consumer, the error and the attempt count; a row in
``dead_letters`` indexes it for ``/admin/dlq`` and replay.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from shared.kafka import Producer
from shared.metrics import DEAD_LETTERS
from shared.outbox import OutgoingMessage
from shared.redaction import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetter:
    consumer: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    error: str
    attempts: int

    def __post_init__(self) -> None:
        # The error travels to a topic, a table and the admin API: no credentials in it.
        object.__setattr__(self, "error", redact(self.error))

    def dlq_headers(self) -> dict[str, str]:
        return {
            **self.headers,
            "dlq.original_topic": self.topic,
            "dlq.original_partition": str(self.partition),
            "dlq.original_offset": str(self.offset),
            "dlq.consumer": self.consumer,
            "dlq.error": self.error[:2000],
            "dlq.attempts": str(self.attempts),
            "dlq.failed_at": datetime.now(UTC).isoformat(),
        }


class DeadLetterSink:
    def __init__(self, pool: asyncpg.Pool, producer: Producer, service: str) -> None:
        self._pool = pool
        self._producer = producer
        self._service = service

    async def send(self, letter: DeadLetter) -> None:
        """Index the letter, then publish it; both are idempotent per source offset, so a
        crash in between and a retry leave one row and at worst a duplicate DLQ record. A
        letter the database cannot store (it refuses its bytes) is still published."""
        headers = letter.dlq_headers()
        try:
            await self._index(letter)
        except (asyncpg.DataError, ValueError) as exc:
            headers["dlq.unindexed"] = f"{type(exc).__name__}: {exc}"[:500]
            log.error("dead letter not indexed (%s); publishing it anyway", exc)
        key = None if letter.key is None else letter.key.decode(errors="replace")
        await self._producer.publish(
            [OutgoingMessage(f"{self._service}.dlq", key, letter.value or b"", headers)]
        )
        DEAD_LETTERS.labels(self._service, letter.topic).inc()
        log.error(
            "dead-lettered %s[%d]@%d: %s",
            letter.topic,
            letter.partition,
            letter.offset,
            letter.error,
            extra={"fields": {"topic": letter.topic, "attempts": letter.attempts}},
        )

    async def _index(self, letter: DeadLetter) -> None:
        await self._pool.execute(
            """
            INSERT INTO dead_letters (consumer, topic, partition, "offset", message_key, value,
                                      headers, error, attempts)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (consumer, topic, partition, "offset") DO NOTHING
            """,
            letter.consumer,
            letter.topic,
            letter.partition,
            letter.offset,
            letter.key,
            letter.value,
            json.dumps(letter.headers),
            letter.error,
            letter.attempts,
        )
