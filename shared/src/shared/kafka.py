"""Kafka plumbing: the idempotent producer, consumer settings and a publisher that returns
only once the broker acknowledged every message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.outbox import OutgoingMessage
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


PUBLISH_TIMEOUT = 30.0


def _sender_alive(producer: AIOKafkaProducer) -> bool:
    """aiokafka keeps a dead sender task's error and raises it on every later send."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is None or not task.done()


def encode_headers(headers: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers.items()]


def decode_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Header values as text. Kafka allows null values, and PostgreSQL text and jsonb refuse
    NUL characters: both are made harmless, since the headers end up in those columns."""
    return {
        k: (v or b"").decode(errors="replace").replace("\x00", "\ufffd") for k, v in headers or ()
    }


class Producer:
    """A lazily started idempotent producer (``acks=all``, idempotence on: the broker drops
    retried duplicates and keeps per-partition order). Starting retries until the broker
    answers, so a service can boot while Kafka is still down."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._settings.kafka_bootstrap_servers,
                    client_id=f"{self._settings.service_name}-producer",
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=5,
                    request_timeout_ms=15000,
                    max_request_size=1024 * 1024,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send all messages in order; return when the broker acknowledged every one.

        Raises on failure (nothing is known to be published then, so callers resend all).
        A producer that cannot recover by itself (a non-retriable idempotence error, a dead
        sender task, no acknowledgement within ``PUBLISH_TIMEOUT``) is dropped, and the next
        call starts a fresh one with a new producer id."""
        if not messages:
            return
        producer = await self.get()
        try:
            futures = [
                await producer.send(
                    m.topic,
                    m.value,
                    key=None if m.key is None else m.key.encode(),
                    headers=encode_headers(m.headers),
                )
                for m in messages
            ]
            await asyncio.wait_for(asyncio.gather(*futures), PUBLISH_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) or not exc.retriable or not _sender_alive(producer):
                log.warning("dropping the Kafka producer after %r", exc)
                await self.close()
            raise

    async def ready(self, timeout: float = 2.0) -> bool:
        try:
            producer = await asyncio.wait_for(self.get(), timeout)
            await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout)
        except Exception:  # any failure means "not ready"; the reason is logged by callers
            return False
        return _sender_alive(producer)

    async def close(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None


def new_consumer(settings: ServiceSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        client_id=f"{settings.service_name}-consumer",
        enable_auto_commit=settings.pitfall_auto_commit,
        auto_commit_interval_ms=100,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.consumer_max_poll_records,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        fetch_min_bytes=settings.consumer_fetch_min_bytes,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
    )
