"""The receiving side: what a consumer has applied, per event and per ordered stream.

Every method runs inside the consumer's unit of work, so the dedup row, the stream's last
sequence, parking and the business change commit or roll back together.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from shared.envelope import Envelope, parse_envelope

Stream = tuple[str, str, str]  # (source, aggregate_type, aggregate_id)


@dataclass(frozen=True)
class ParkedEvent:
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    headers: dict[str, str]


class Inbox(ABC):
    """Port of one consumer's receiving state.

    - ``seen(event_id)``: the event was applied before (dedup).
    - ``last_sequence(stream)``: the highest sequence applied on the stream, 0 when none; the
      Postgres implementation locks the stream's row until the transaction ends.
    - ``record(envelope)``: the event is applied: dedup row, stream advanced to its sequence.
    - ``park(event)``: keep an event that arrived ahead of a gap; parking twice is harmless.
    - ``unpark(stream, sequence)``: remove and return the parked event with that sequence.
    """

    @abstractmethod
    async def seen(self, event_id: UUID) -> bool: ...

    @abstractmethod
    async def last_sequence(self, stream: Stream) -> int: ...

    @abstractmethod
    async def record(self, envelope: Envelope) -> None: ...

    @abstractmethod
    async def park(self, event: ParkedEvent) -> None: ...

    @abstractmethod
    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None: ...


class PostgresInbox(Inbox):
    def __init__(self, conn: asyncpg.Connection, consumer: str) -> None:
        self._conn = conn
        self._consumer = consumer

    async def seen(self, event_id: UUID) -> bool:
        found = await self._conn.fetchval(
            "SELECT 1 FROM processed_events WHERE consumer = $1 AND event_id = $2",
            self._consumer,
            event_id,
        )
        return found is not None

    async def last_sequence(self, stream: Stream) -> int:
        # Create the row first so that FOR UPDATE has something to lock: two consumers of
        # the same stream (a rebalance overlap) then serialise instead of both applying.
        await self._conn.execute(
            """
            INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,
                                            last_sequence)
            VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING
            """,
            self._consumer,
            *stream,
        )
        last: int = await self._conn.fetchval(
            """
            SELECT last_sequence FROM consumer_sequences
            WHERE consumer = $1 AND source = $2 AND aggregate_type = $3 AND aggregate_id = $4
            FOR UPDATE
            """,
            self._consumer,
            *stream,
        )
        return last

    async def record(self, envelope: Envelope) -> None:
        await self._conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING",
            self._consumer,
            envelope.event_id,
        )
        await self._conn.execute(
            """
            INSERT INTO consumer_sequences (consumer, source, aggregate_type, aggregate_id,
                                            last_sequence)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (consumer, source, aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = GREATEST(consumer_sequences.last_sequence, $5),
                updated_at = now()
            """,
            self._consumer,
            *envelope.stream,
            envelope.sequence,
        )

    async def park(self, event: ParkedEvent) -> None:
        await self._conn.execute(
            """
            INSERT INTO parked_events (consumer, source, aggregate_type, aggregate_id, sequence,
                                       topic, partition, "offset", value, headers)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING
            """,
            self._consumer,
            *event.envelope.stream,
            event.envelope.sequence,
            event.topic,
            event.partition,
            event.offset,
            event.envelope.to_bytes(),
            json.dumps(event.headers),
        )

    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None:
        row = await self._conn.fetchrow(
            """
            DELETE FROM parked_events
            WHERE consumer = $1 AND source = $2 AND aggregate_type = $3 AND aggregate_id = $4
              AND sequence = $5
            RETURNING topic, partition, "offset", value, headers
            """,
            self._consumer,
            *stream,
            sequence,
        )
        if row is None:
            return None
        return ParkedEvent(
            parse_envelope(row["value"]),
            row["topic"],
            row["partition"],
            row["offset"],
            json.loads(row["headers"]),
        )


@dataclass
class InMemoryInboxState:
    processed: set[UUID] = field(default_factory=set)
    sequences: dict[Stream, int] = field(default_factory=dict)
    parked: dict[tuple[Stream, int], ParkedEvent] = field(default_factory=dict)


class InMemoryInbox(Inbox):
    """The fake for unit tests; the shared contract tests hold it to the Postgres behaviour."""

    def __init__(self, state: InMemoryInboxState) -> None:
        self.state = state

    async def seen(self, event_id: UUID) -> bool:
        return event_id in self.state.processed

    async def last_sequence(self, stream: Stream) -> int:
        return self.state.sequences.get(stream, 0)

    async def record(self, envelope: Envelope) -> None:
        self.state.processed.add(envelope.event_id)
        stream = envelope.stream
        self.state.sequences[stream] = max(self.state.sequences.get(stream, 0), envelope.sequence)

    async def park(self, event: ParkedEvent) -> None:
        self.state.parked.setdefault((event.envelope.stream, event.envelope.sequence), event)

    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None:
        return self.state.parked.pop((stream, sequence), None)
