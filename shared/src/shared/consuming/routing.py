"""Declarative subscriptions: a service lists, in one place, which events it reacts to.

router = Router[OrderUnitOfWork]()

@router.subscriber(InventoryReserved)
async def when_inventory_reserved_confirm_order(event: InventoryReserved,
                                                uow: OrderUnitOfWork) -> None: ...

A service also registers a ``batch_preparer``: when the records of one poll go in one
transaction, it runs first, with every payload the service handles, and loads and locks the
aggregates they name, each kind in one statement and in key order (its repositories then
hand them to the handlers without a round trip: see :mod:`shared.writing.repository`). The
order matters where handlers share rows (the stock of a SKU): without it, two batches of
different partitions take the rows of their events one event after another, in opposite
orders, and deadlock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared.contracts import IntegrationEvent, current, spec_of
from shared.writing.uow import UnitOfWork

U = TypeVar("U", bound=UnitOfWork)
P = TypeVar("P", bound=IntegrationEvent)
Handler = Callable[[P, U], Awaitable[None]]
BatchPreparer = Callable[[Sequence[IntegrationEvent], U], Awaitable[None]]


@dataclass(frozen=True)
class Subscription(Generic[U]):
    topic: str
    event_type: str
    handler: Callable[[Any, U], Awaitable[None]]

    @property
    def name(self) -> str:
        return self.handler.__name__


class Router(Generic[U]):
    def __init__(self) -> None:
        self._subscriptions: dict[str, Subscription[U]] = {}
        self._prepare: BatchPreparer[U] | None = None

    def subscriber(self, event: type[P]) -> Callable[[Handler[P, U]], Handler[P, U]]:
        spec = spec_of(event)
        if current(spec.event_type) is not spec:
            # decode_payload returns every version as the current model: that is what
            # the handler receives, so that is what it must be declared for.
            raise ValueError(
                f"{event.__name__} is {spec.event_type} v{spec.schema_version}; handlers "
                f"take the current version, v{current(spec.event_type).schema_version}"
            )

        def register(handler: Handler[P, U]) -> Handler[P, U]:
            if spec.event_type in self._subscriptions:
                raise ValueError(f"{spec.event_type} already has a handler")
            self._subscriptions[spec.event_type] = Subscription(
                spec.topic, spec.event_type, handler
            )
            return handler

        return register

    def batch_preparer(self, prepare: BatchPreparer[U]) -> BatchPreparer[U]:
        """Register what runs first in a batch's transaction (see the module docstring)."""
        if self._prepare is not None:
            raise ValueError("the router already has a batch preparer")
        self._prepare = prepare
        return prepare

    async def prepare_batch(self, events: Sequence[IntegrationEvent], uow: U) -> None:
        if self._prepare is not None and events:
            await self._prepare(events, uow)

    def handler_for(self, event_type: str) -> Subscription[U] | None:
        return self._subscriptions.get(event_type)

    @property
    def topics(self) -> list[str]:
        return sorted({s.topic for s in self._subscriptions.values()})

    def describe(self) -> str:
        """The routing table, one line per subscription: ``topic  EventType -> handler``."""
        rows = sorted(self._subscriptions.values(), key=lambda s: (s.topic, s.event_type))
        return "\n".join(f"{s.topic:<10} {s.event_type:<28} -> {s.name}" for s in rows)
