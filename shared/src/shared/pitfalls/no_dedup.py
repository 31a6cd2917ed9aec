"""``PITFALL_NO_DEDUP``: no dedup row, so every copy of an event is applied.

Kafka delivers at least once: a producer's retry, a replay from the dead-letter queue, or
a redelivery after a crash between the commit and the offset commit brings the same event
back. With the sequence check on, a copy of an event at or below its stream's position is
still dropped; what gets through is an event whose stream position was lost or never
kept: a replayed dead letter, say, is applied twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from uuid import UUID

from shared.consuming.inbox import Inbox, Stream
from shared.consuming.processing import Dedup


class NoDedup(Dedup):
    async def first_time(self, inbox: Inbox, event_id: UUID) -> bool:
        return True

    async def all_first_time(
        self, inbox: Inbox, event_ids: Sequence[UUID], *, advancing: Mapping[Stream, int]
    ) -> bool:
        await inbox.advance_all(advancing)  # the streams still move on, no dedup row written
        return True
