"""The receiving side: what a consumer has applied, per event and per ordered stream.

Every method runs inside the consumer's unit of work, so the dedup row, the stream's last
sequence, parking and the business change commit or roll back together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from uuid import UUID

from shared.envelope import Envelope

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
