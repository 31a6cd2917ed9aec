"""The receiving side: what a consumer has applied, per event and per ordered stream.

Every method runs inside the consumer's unit of work, so the dedup row, the stream's last
sequence, parking and the business change commit or roll back together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

from shared.contracts.envelope import Envelope

Stream = tuple[str, str, str]  # (source, aggregate_type, aggregate_id)


@dataclass(frozen=True)
class ParkedEvent:
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    headers: dict[str, str]


@dataclass(frozen=True)
class StreamPosition:
    """Where a consumer stands on one stream: the last sequence applied (0 when none) and
    whether events of it are parked ahead of a gap."""

    last_sequence: int
    has_parked: bool


class Inbox(ABC):
    """Port of one consumer's receiving state. Each method is one round trip to the
    database in the PostgreSQL adapter, since the consumer calls them for every event
    (whether events are parked comes with the stream's lock: see
    ``PostgresInbox.lock_streams``).

    - ``lock_stream(stream)``: the stream's position; the PostgreSQL adapter creates the
      stream's row if needed and locks it until the transaction ends, so two consumers of one
      stream (a rebalance overlap) take turns instead of both applying. ``has_parked`` is
      read once the lock is held: it includes what the other one parked while this one
      waited for the lock.
    - ``mark_processed(event_id)``: write the dedup row; False when it was already there (the
      event was applied before, and this is a duplicate).
    - ``seen(event_id)``: the dedup row exists (read only).
    - ``advance(stream, sequence)``: the stream's last applied sequence is now ``sequence``
      (never lowered).
    - ``pass_over(stream, sequence)``: the fast path for an event this consumer ignores: when
      it is the stream's next one and nothing of the stream is parked, advance to it (locking
      the stream's row) and return True; otherwise change nothing and return False.
    - ``park(event)``: keep an event that arrived ahead of a gap; parking twice is harmless.
    - ``unpark(stream, sequence)``: remove and return the parked event with that sequence.
    - ``count_failure(topic, partition, offset, error)``: one more failed attempt at that
      record; returns how many there have been in all, whichever member of the group made
      them, so a rebalance or a restart does not start the count again. Called in a unit of
      work of its own (the one that failed rolled back).
    - ``forget_failures(topic, partition, offset)``: the record was applied or dead-lettered:
      its count goes.

    For a batch of events there are set-based forms, one round trip each however many events
    the batch holds (this base class loops over the single forms, which is what the in-memory
    fake needs; the PostgreSQL adapter sends one statement):

    - ``lock_streams(streams)``: ``lock_stream`` for each, locked in sorted order (two
      transactions locking overlapping sets cannot deadlock).
    - ``advance_all(positions, mark_processed=event_ids)``: ``advance`` for each stream and
      ``mark_processed`` for each event id, in one round trip; returns the ids that were new
      (those not returned were marked before).
    """

    @abstractmethod
    async def lock_stream(self, stream: Stream) -> StreamPosition: ...

    @abstractmethod
    async def mark_processed(self, event_id: UUID) -> bool: ...

    @abstractmethod
    async def seen(self, event_id: UUID) -> bool: ...

    @abstractmethod
    async def advance(self, stream: Stream, sequence: int) -> None: ...

    @abstractmethod
    async def pass_over(self, stream: Stream, sequence: int) -> bool: ...

    @abstractmethod
    async def park(self, event: ParkedEvent) -> None: ...

    @abstractmethod
    async def unpark(self, stream: Stream, sequence: int) -> ParkedEvent | None: ...

    @abstractmethod
    async def count_failure(self, topic: str, partition: int, offset: int, error: str) -> int: ...

    @abstractmethod
    async def forget_failures(self, topic: str, partition: int, offset: int) -> None: ...

    async def lock_streams(self, streams: Iterable[Stream]) -> dict[Stream, StreamPosition]:
        return {stream: await self.lock_stream(stream) for stream in sorted(set(streams))}

    async def advance_all(
        self, positions: Mapping[Stream, int], *, mark_processed: Sequence[UUID] = ()
    ) -> set[UUID]:
        marked = {event_id for event_id in mark_processed if await self.mark_processed(event_id)}
        for stream in sorted(positions):
            await self.advance(stream, positions[stream])
        return marked
