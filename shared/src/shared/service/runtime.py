"""A service's composition root and process lifecycle.

``ServiceDefinition`` says what a service is (settings, subscriptions, unit of work, HTTP
routes, extra background workers); ``Runtime`` owns what it runs (pool, producer, relay,
consumer, maintenance) and ``serve`` is the process entry point: wait for the database,
migrate, then serve HTTP with everything started in the FastAPI lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import APIRouter

from shared.consuming.consumer import ConsumerRunner
from shared.consuming.deadletter import DeadLetterSink
from shared.consuming.processing import EventProcessor
from shared.consuming.routing import Router, U
from shared.kafka import Producer
from shared.persistence.db import DATABASE_ERRORS, create_pool
from shared.persistence.maintenance import apply_retention, expire_gaps, refresh_gauges
from shared.persistence.postgres import OutboxFactory
from shared.pitfalls import strategies
from shared.service.settings import ServiceSettings
from shared.writing.debounce import DebounceEmitter
from shared.writing.relay import OutboxRelay
from shared.writing.storm import FanOutGuard
from shared.writing.uow import Coarse, UnitOfWork, debounced

log = logging.getLogger(__name__)

U_co = TypeVar("U_co", bound=UnitOfWork, covariant=True)


class UowFactory(Protocol[U_co]):
    def __call__(
        self,
        pool: asyncpg.Pool,
        source: str,
        *,
        new_outbox: OutboxFactory | None = None,
        outbox_written: Callable[[], None] | None = None,
        acquire_timeout: float | None = None,
        coarse: Coarse = debounced,
        fanout: FanOutGuard | None = None,
    ) -> U_co: ...


Worker = Callable[["Runtime[Any]"], Awaitable[None]]


@dataclass
class ServiceDefinition(Generic[U]):
    settings: ServiceSettings
    title: str
    description: str
    router: Router[U]
    new_uow: UowFactory[U]
    migrations: Path
    api_routers: Sequence[APIRouter] = ()
    workers: dict[str, Worker] = field(default_factory=dict)


async def supervise(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` forever: an unexpected crash is logged and the work restarted."""
    backoff = 0.5
    while True:
        started = time.monotonic()
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %.1fs", name, backoff)
        if time.monotonic() - started > 60:
            backoff = 0.5
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


class Runtime(Generic[U]):
    def __init__(self, definition: ServiceDefinition[U]) -> None:
        self.definition = definition
        self.settings = definition.settings
        self.service = self.settings.service_name
        self.producer = Producer(self.settings)
        self.strategies = strategies(self.settings, self.producer.publish)
        self.fanout = FanOutGuard(self.service, self.settings.storm_fanout_warn_threshold)
        self._tasks: list[asyncio.Task[None]] = []

    def new_uow(self) -> U:
        """A unit of work for background work: consumer, dispatcher, maintenance."""
        return self._new_uow(self.pool)

    def new_http_uow(self) -> U:
        """A unit of work for an HTTP request, from the HTTP requests' own pool, so a burst
        of requests cannot starve event processing (nor the other way round)."""
        return self._new_uow(self.http_pool)

    def _new_uow(self, pool: asyncpg.Pool) -> U:
        return self.definition.new_uow(
            pool,
            self.service,
            new_outbox=self.strategies.new_outbox,
            outbox_written=self.relay.wake,
            acquire_timeout=self.settings.db_acquire_timeout_seconds,
            coarse=self.strategies.coarse,
            fanout=self.fanout,
        )

    async def start(self) -> None:
        self.pool = await create_pool(self.settings.database_url, self.settings.db_pool_size)
        self.http_pool = await create_pool(
            self.settings.database_url, self.settings.db_http_pool_size
        )
        self.dead_letters = DeadLetterSink(self.pool, self.producer, self.service)
        self.relay = OutboxRelay(
            self.settings, self.pool, self.producer, key_of=self.strategies.key_of
        )
        processor = EventProcessor(
            self.definition.router,
            self.new_uow,
            dedup=self.strategies.dedup,
            sequence_check=self.strategies.sequence_check,
        )
        self.consumer = ConsumerRunner(
            self.settings,
            processor,
            self.definition.router.topics,
            self.dead_letters,
            offsets=self.strategies.new_offsets(),
        )
        self.debounce = DebounceEmitter(
            self.pool,
            self.service,
            quiet_seconds=self.settings.debounce_quiet_seconds,
            max_wait_seconds=self.settings.debounce_max_wait_seconds,
            poll_seconds=self.settings.debounce_poll_seconds,
            emitted=self.relay.wake,
            new_outbox=self.strategies.new_outbox,
        )
        workers: dict[str, Callable[[], Awaitable[None]]] = {
            "consumer": self.consumer.run,
            "maintenance": self._maintain,
            "debounce": self.debounce.run,
            "relay": self.relay.run,
        }
        for name, worker in self.definition.workers.items():
            workers[name] = lambda worker=worker: worker(self)  # type: ignore[misc]
        for name, work in workers.items():
            self._tasks.append(asyncio.create_task(supervise(name, work), name=name))
        log.info("%s started; subscriptions:\n%s", self.service, self.definition.router.describe())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.producer.close()
        await self.http_pool.close()
        await self.pool.close()

    async def ready(self) -> dict[str, bool]:
        database = False
        try:
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2.0)
            database = True
        except DATABASE_ERRORS:
            pass
        kafka = await self.producer.ready()
        return {"database": database, "kafka": kafka}

    async def _maintain(self) -> None:
        """Refresh the backlog gauges; dead-letter gaps that never filled; purge what no
        longer protects anything (dedup rows, idle sequence rows, replayed dead letters: see
        :func:`shared.persistence.maintenance.apply_retention`)."""
        last_purge = 0.0
        while True:
            try:
                await refresh_gauges(self.pool, self.service)
                await expire_gaps(
                    self.pool,
                    self.dead_letters,
                    self.service,
                    self.settings.parked_gap_timeout_seconds,
                )
                if time.monotonic() - last_purge > self.settings.retention_interval_seconds:
                    purged = await apply_retention(self.pool, self.settings)
                    if any(purged.values()):
                        log.info("retention purged %s", purged)
                    last_purge = time.monotonic()
            except (*DATABASE_ERRORS, KafkaError) as exc:
                log.warning("maintenance skipped: %s", exc)
            await asyncio.sleep(5.0)
