"""Kafka plumbing: the idempotent producer, consumer settings and a publisher that returns
only once the broker acknowledged every message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import CloseReason
from aiokafka.errors import KafkaConnectionError, KafkaError

from shared.service.settings import ServiceSettings
from shared.writing.outbox import OutgoingMessage

log = logging.getLogger(__name__)


PUBLISH_TIMEOUT = 30.0
# How long stopping a producer may wait for the broker to acknowledge what it still holds,
# before abandoning it; and how long starting one may wait for the broker.
STOP_GRACE_SECONDS = 1.0
START_TIMEOUT = 15.0


def _sender_alive(producer: AIOKafkaProducer) -> bool:
    """aiokafka keeps a dead sender task's error and raises it on every later send."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is None or not task.done()


async def _finished(task: asyncio.Future[None], timeout: float) -> bool:
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done and not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("stopping the Kafka producer: %r", exc)
    return bool(done)


async def stop_abandoning(producer: AIOKafkaProducer) -> None:
    """Stop ``producer`` within a few seconds, whatever the broker does.

    ``AIOKafkaProducer.stop()`` flushes first, and with idempotence on the sender retries a
    batch until the broker answers, however long an outage lasts. What is still unacknowledged
    after ``STOP_GRACE_SECONDS`` is abandoned instead: its sends fail, so its outbox rows stay
    and a new producer sends them again (consumers drop any duplicate)."""
    stopping = asyncio.ensure_future(producer.stop())
    try:
        if await _finished(stopping, STOP_GRACE_SECONDS):
            return
        log.warning("abandoning the Kafka producer's unacknowledged records")
        # aiokafka has no public way to give up: fail the batches it holds, and close its
        # connections, which fails the requests in flight that the sender would await.
        producer._message_accumulator.fail_all(KafkaConnectionError("producer abandoned"))
        for conn in list(producer.client._conns.values()):
            conn.close(reason=CloseReason.SHUTDOWN)
        if not await _finished(stopping, STOP_GRACE_SECONDS):
            stopping.cancel()
            log.warning("gave up waiting for the Kafka producer to stop")
    except asyncio.CancelledError:
        stopping.cancel()
        raise


async def stop_consumer_within(consumer: AIOKafkaConsumer, timeout: float) -> None:
    """Stop ``consumer``, leaving its group if the broker answers within ``timeout``; past
    that, its connections are closed without a goodbye (the group coordinator expels the
    member after its session timeout, and its partitions are redelivered from the last
    committed offsets, which is what an unclean exit does anyway)."""
    stopping = asyncio.ensure_future(consumer.stop())
    try:
        if await _finished(stopping, timeout):
            return
        log.warning(
            "the Kafka consumer did not stop within %.0fs; closing its connections", timeout
        )
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        for conn in list(consumer._client._conns.values()):
            conn.close(reason=CloseReason.SHUTDOWN)
    except asyncio.CancelledError:
        stopping.cancel()
        raise


def rebootstrapping(client: AIOKafkaClient) -> None:
    """Make ``client`` ask its bootstrap list again when no node it knows answers.

    aiokafka reads the bootstrap list once: after that it asks only the nodes the last
    metadata named (aio-libs/aiokafka#459). A client that learned a cluster while only one
    node was up (right after the whole cluster restarted, say) then knows that node alone,
    and when it dies the client asks it forever, although two others serve. Kafka's own
    clients re-bootstrap in that case (KIP-1102); this gives aiokafka's client the same
    fallback: when every known node failed a metadata request, bootstrap again."""
    from_known_nodes = client._metadata_update
    failed = 0  # bootstraps in a row that found no node: one warning per outage, not per try

    async def update(cluster: ClusterMetadata, topics: object) -> bool:
        nonlocal failed
        if await from_known_nodes(cluster, topics):
            return True
        if cluster is not client.cluster:
            return False
        if failed == 0:
            log.warning("no known Kafka node answers; bootstrapping again from %s", client.hosts)
        try:
            await client.bootstrap()
        except KafkaConnectionError:
            failed += 1
            return False
        if failed:
            log.info("Kafka answers again, after %d bootstrap(s) that found no node", failed + 1)
        failed = 0
        return True

    client._metadata_update = update


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
    retried duplicates and keeps per-partition order). A failed start is retried by the next
    call, so a service can boot while Kafka is still down.

    Dropping a producer (a reset, or ``close``) returns within seconds even while the broker
    is unreachable: it abandons what the old producer still holds (see
    :func:`stop_abandoning`), and the lock that guards starting is never held while a
    producer stops."""

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
                rebootstrapping(producer.client)
                try:
                    await asyncio.wait_for(producer.start(), START_TIMEOUT)
                except BaseException:
                    await stop_abandoning(producer)
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
            # The sends are bounded too: one waits for the topic's metadata while none is known.
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                futures = [
                    await producer.send(
                        m.topic,
                        m.value,
                        key=None if m.key is None else m.key.encode(),
                        headers=encode_headers(m.headers),
                    )
                    for m in messages
                ]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) or not exc.retriable or not _sender_alive(producer):
                log.warning("dropping the Kafka producer after %r", exc)
                await self._drop(producer)
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
            producer, self._producer = self._producer, None
        if producer is not None:
            await stop_abandoning(producer)

    async def _drop(self, producer: AIOKafkaProducer) -> None:
        """Drop ``producer`` if it is still the current one (another caller may have replaced
        it already); the next call starts a fresh one."""
        async with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        await stop_abandoning(producer)


def new_consumer(
    settings: ServiceSettings, *, auto_commit_interval_ms: int | None = None
) -> AIOKafkaConsumer:
    """A consumer in the service's group. Kafka commits its offsets itself every
    ``auto_commit_interval_ms``, what was fetched whether done or not, when that is given;
    by default it does not, and its runner's offset policy commits
    (:mod:`shared.consuming.offsets`)."""
    auto_commit = auto_commit_interval_ms is not None
    interval_ms = auto_commit_interval_ms if auto_commit_interval_ms is not None else 5000
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        client_id=f"{settings.service_name}-consumer",
        enable_auto_commit=auto_commit,
        auto_commit_interval_ms=interval_ms,  # read only when it commits itself
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.consumer_max_poll_records,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        fetch_min_bytes=settings.consumer_fetch_min_bytes,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
    )
    rebootstrapping(consumer._client)
    return consumer
