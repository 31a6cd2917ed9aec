"""``PITFALL_NAIVE_DUAL_WRITE``: publish to Kafka after the database commit, no outbox.

Two writes, two systems, no transaction across them: a crash between the commit and the
publish (the failpoint ``uow.after_commit``), or a broker that is down then, loses the
events for good while the business change stays. The outbox writes them in the same
transaction instead, and the relay publishes them at least once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import asyncpg

from shared.contracts.envelope import Envelope
from shared.persistence.postgres import OutboxFactory, PostgresOutbox
from shared.writing.outbox import AggregateKey, OutgoingMessage

Publish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]


class PublishAfterCommit(PostgresOutbox):
    """Numbers events like the outbox, keeps them in memory, publishes once committed."""

    def __init__(self, conn: asyncpg.Connection, source: str, publish: Publish) -> None:
        super().__init__(conn, source)
        self._publish = publish
        self._kept: list[OutgoingMessage] = []

    async def _store(
        self, messages: Sequence[OutgoingMessage], envelopes: Sequence[Envelope]
    ) -> None:
        self._kept.extend(messages)
        self.written = True  # the failpoint after the commit fires, as with the outbox

    async def _store_numbered(
        self,
        last: Mapping[AggregateKey, int],
        counts: Mapping[AggregateKey, int],
        messages: Sequence[OutgoingMessage],
        envelopes: Sequence[Envelope],
    ) -> bool:
        return False  # no row to store with the sequences: they are always taken first

    async def committed(self) -> None:
        if self._kept:
            await self._publish(self._kept)  # the pitfall: lost if this never happens


def publishing_after_commit(publish: Publish) -> OutboxFactory:
    return lambda conn, source: PublishAfterCommit(conn, source, publish)
