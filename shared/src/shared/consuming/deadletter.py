"""Dead letters: what a consumer gave up on, kept with the reason and where it came from.

The record goes to ``<service>.dlq`` with its original key and value, and headers naming the
original topic, partition, offset, the consumer, the error, the attempt count and the
letter's own id (``dlq.letter_id``); a row in ``dead_letters`` keeps it, whole, for
``/admin/dlq`` and replay.

Every letter has its own identity, never its source offset: offsets repeat when the broker
is reformatted and the database kept. A letter of a consumed record takes an id derived from
the record (topic, partition, offset, timestamp, key and value), so the same record
redelivered after a crash is the same letter, and another record at the same offset is
another letter. A letter of an expired gap takes a random one: it is written in the
transaction that takes the event out of parking, which happens once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast
from uuid import UUID, uuid4, uuid5

import asyncpg
from aiokafka.errors import KafkaError

from shared.consuming.inbox import Stream
from shared.contracts.envelope import Envelope
from shared.kafka import Producer
from shared.observability.metrics import DEAD_LETTERS
from shared.observability.redaction import redact
from shared.writing.outbox import OutgoingMessage

log = logging.getLogger(__name__)

# What a stub keeps of a record that was too large for the dead-letter topic.
STUB_VALUE_BYTES = 16 * 1024
STUB_KEY_CHARS = 1024
STUB_HEADERS = ("event_type", "schema_version", "correlation_id", "traceparent", "tracestate")
_LETTERS = UUID("5a0c1b6e-2f7d-4d7e-9c1e-3b8f4a6d2e10")  # the namespace of record letter ids

OnTopic = Literal["whole", "stub", "none"]


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
    letter_id: UUID = field(default_factory=uuid4)
    stream: Stream | None = None  # of the letter's event; None when it is not an envelope
    sequence: int | None = None

    @classmethod
    def of_record(
        cls,
        consumer: str,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, str],
        error: str,
        attempts: int,
        envelope: Envelope | None = None,
    ) -> DeadLetter:
        """The letter of a consumed record, its id derived from the record (see above)."""
        identity = "\x00".join(
            [
                consumer,
                topic,
                str(partition),
                str(offset),
                str(timestamp),
                hashlib.sha256(key or b"").hexdigest(),
                hashlib.sha256(value or b"").hexdigest(),
            ]
        )
        return cls(
            consumer,
            topic,
            partition,
            offset,
            key,
            value,
            headers,
            error,
            attempts,
            letter_id=uuid5(_LETTERS, identity),
            stream=None if envelope is None else envelope.stream,
            sequence=None if envelope is None else envelope.sequence,
        )

    def __post_init__(self) -> None:
        # The error travels to a topic, a table and the admin API: no credentials in it.
        object.__setattr__(self, "error", redact(self.error))

    def dlq_headers(self) -> dict[str, str]:
        return {
            "dlq.letter_id": str(self.letter_id),
            "dlq.original_topic": self.topic,
            "dlq.original_partition": str(self.partition),
            "dlq.original_offset": str(self.offset),
            "dlq.consumer": self.consumer,
            "dlq.error": self.error[:2000],
            "dlq.attempts": str(self.attempts),
            "dlq.failed_at": datetime.now(UTC).isoformat(),
        }

    def record(self, dlq_topic: str) -> OutgoingMessage:
        """The whole record for the dead-letter topic."""
        key = None if self.key is None else self.key.decode(errors="replace")
        headers = {**self.headers, **self.dlq_headers()}
        return OutgoingMessage(dlq_topic, key, self.value or b"", headers)

    def stub(self, dlq_topic: str, reason: str) -> OutgoingMessage:
        """A record that fits where the whole one did not: the first bytes of the value, a
        few of the original headers, and the dlq ones, saying where the whole letter is."""
        key = None if self.key is None else self.key.decode(errors="replace")[:STUB_KEY_CHARS]
        value = self.value or b""
        headers = {k: v[:512] for k, v in self.headers.items() if k in STUB_HEADERS}
        headers.update(self.dlq_headers())
        headers["dlq.truncated"] = (
            f"{reason[:500]}; the value ({len(value)} bytes) and headers are whole in the "
            f"dead_letters table, letter_id {self.letter_id}"
        )
        return OutgoingMessage(dlq_topic, key, value[:STUB_VALUE_BYTES], headers)


class UnstorableLetterError(Exception):
    """The database refused the letter's bytes (see :meth:`DeadLetterSink.send`)."""


class DeadLetterSink:
    def __init__(self, pool: asyncpg.Pool, producer: Producer, service: str) -> None:
        self._pool = pool
        self._producer = producer
        self._service = service

    @property
    def topic(self) -> str:
        return f"{self._service}.dlq"

    async def send(self, letter: DeadLetter) -> None:
        """Keep the letter in a transaction of its own (see :meth:`keep`). A letter the
        database cannot store (it refuses its bytes) is still published, marked
        ``dlq.unindexed``. Raises what :meth:`keep` raises for the caller to retry."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await self.keep(cast(asyncpg.Connection, conn), letter)
        except UnstorableLetterError as exc:
            log.error("dead letter not indexed (%s); publishing it anyway", exc)
            record = letter.record(self.topic)
            record.headers["dlq.unindexed"] = str(exc)[:500]
            await self._publish(letter, record)

    async def keep(self, conn: asyncpg.Connection, letter: DeadLetter) -> bool:
        """Index the letter and publish it, inside the caller's transaction: the row
        commits with what it records (an event taken out of parking, say), and only once
        its record is on the topic. False when the letter was kept before (a redelivery of
        the same record): nothing is written or published again.

        A retriable Kafka error (the broker is away) is raised: roll back and try again
        later. A non-retriable one (the record is over the producer's ``max_request_size``,
        say) cannot be waited out: the letter is kept anyway, whole in the table, with a
        truncated stub on the topic (``on_topic = 'stub'``), or nothing there if even the
        stub is refused (``'none'``)."""
        try:
            row_id = await conn.fetchval(
                """
                INSERT INTO dead_letters (letter_id, consumer, topic, partition, "offset",
                                          message_key, value, headers, error, attempts,
                                          source, aggregate_type, aggregate_id, sequence)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                ON CONFLICT (letter_id) DO NOTHING
                RETURNING id
                """,
                letter.letter_id,
                letter.consumer,
                letter.topic,
                letter.partition,
                letter.offset,
                letter.key,
                letter.value,
                json.dumps(letter.headers),
                letter.error,
                letter.attempts,
                *(letter.stream or (None, None, None)),
                letter.sequence,
            )
        except (asyncpg.DataError, ValueError) as exc:
            raise UnstorableLetterError(f"{type(exc).__name__}: {exc}") from exc
        if row_id is None:
            return False
        on_topic = await self._publish_or_stub(letter)
        if on_topic != "whole":
            await conn.execute(
                "UPDATE dead_letters SET on_topic = $2 WHERE id = $1", row_id, on_topic
            )
        return True

    async def _publish_or_stub(self, letter: DeadLetter) -> OnTopic:
        try:
            await self._publish(letter, letter.record(self.topic))
            return "whole"
        except KafkaError as exc:
            if exc.retriable:
                raise
            reason = f"{type(exc).__name__}: {exc}"
        log.error(
            "dead letter %s refused by Kafka (%s); publishing a stub", letter.letter_id, reason
        )
        try:
            await self._publish(letter, letter.stub(self.topic, reason))
            return "stub"
        except KafkaError as exc:
            if exc.retriable:
                raise
            log.error(
                "dead letter %s refused by Kafka even as a stub (%r); kept in the table only",
                letter.letter_id,
                exc,
            )
            return "none"

    async def _publish(self, letter: DeadLetter, record: OutgoingMessage) -> None:
        await self._producer.publish([record])
        DEAD_LETTERS.labels(self._service, letter.topic).inc()
        log.error(
            "dead-lettered %s[%d]@%d: %s",
            letter.topic,
            letter.partition,
            letter.offset,
            letter.error,
            extra={
                "fields": {
                    "topic": letter.topic,
                    "attempts": letter.attempts,
                    "letter_id": str(letter.letter_id),
                }
            },
        )
