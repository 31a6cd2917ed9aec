"""``PITFALL_NO_SEQUENCE_CHECK``: events applied in the order they arrive.

An aggregate's events normally arrive in order (one key, one partition), but not always: a
replayed dead letter, an event published without its key (``PITFALL_UNKEYED``), a
redelivery. Without the check a late ``OrderPlaced`` is applied after its ``OrderCancelled``
and the order comes back to life; with it, the early event is parked until the gap fills.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.consuming.inbox import Inbox
from shared.consuming.processing import Admission, Delivery, Outcome, SequenceCheck
from shared.contracts import IntegrationEvent


class NoSequenceCheck(SequenceCheck):
    async def admit(
        self, inbox: Inbox, delivery: Delivery, payload: IntegrationEvent | None
    ) -> Admission:
        return Admission()  # apply, whatever the stream's position

    async def plan(
        self,
        inbox: Inbox,
        deliveries: Sequence[Delivery],
        payloads: Sequence[IntegrationEvent | None],
    ) -> list[Outcome] | None:
        return None  # event by event, each admitted
