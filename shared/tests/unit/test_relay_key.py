"""The key the relay gives each record: the aggregate id, so one aggregate's events share a
partition; none at all in the pitfall mode ``PITFALL_UNKEYED``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from shared.kafka import Producer
from shared.pitfalls import strategies
from shared.service.settings import ServiceSettings
from shared.writing.outbox import OutgoingMessage
from shared.writing.relay import OutboxRelay


class OutboxRows:
    """Stands in for the pool: the outbox's rows, read by the relay's one statement a pass
    (which first deletes the ids the broker acknowledged, ``args[0]``, and leaves them out)."""

    def __init__(self, *aggregate_ids: str) -> None:
        self.rows = [
            {
                "id": n,
                "topic": "orders",
                "message_key": aggregate_id,
                "value": b"{}",
                "headers": json.dumps({"event_type": "OrderRejected", "correlation_id": "c"}),
                "created_at": datetime.now(UTC),
            }
            for n, aggregate_id in enumerate(aggregate_ids, start=1)
        ]

    async def fetch(self, query: str, published: list[int], limit: int) -> list[dict[str, Any]]:
        self.rows = [row for row in self.rows if row["id"] not in published]
        return self.rows[:limit]


class Broker:
    """Stands in for the producer: what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.sent.extend(messages)


async def keys_sent(*, pitfall_unkeyed: bool = False) -> list[str | None]:
    settings = ServiceSettings(
        service_name="relay-test",
        http_port=0,
        database_url="postgresql://nowhere/none",
        otel_sdk_disabled=True,
        admin_token="s3cret",
        pitfall_unkeyed=pitfall_unkeyed,
    )
    broker = Broker()
    relay = OutboxRelay(
        settings,
        cast(asyncpg.Pool, OutboxRows("order-1", "order-1", "order-2")),
        cast(Producer, broker),
        key_of=strategies(settings, broker.publish).key_of,
    )
    assert await relay.publish_batch() == 3
    return [message.key for message in broker.sent]


async def test_the_relay_keys_each_record_by_its_aggregate_id() -> None:
    assert await keys_sent() == ["order-1", "order-1", "order-2"]


async def test_with_pitfall_unkeyed_the_relay_sends_no_key() -> None:
    assert await keys_sent(pitfall_unkeyed=True) == [None, None, None]
