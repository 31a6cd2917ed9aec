"""One set of cases for the debounce hold, run against the in-memory fake and against real
PostgreSQL: the last change of a burst wins, per aggregate, and nothing reaches the outbox
until the emitter moves it (unless debounce is off, the pitfall mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.observability.correlation import correlated
from shared.persistence.postgres import PostgresUnitOfWork
from shared.pitfalls.no_debounce import published_at_once
from shared.testing.fakes import InMemoryState, InMemoryUnitOfWork
from shared.testing.infra import create_database, drop_database
from shared.testing.worker import AddressEdited, Item
from shared.writing.uow import UnitOfWork, debounced

NewUow = Callable[[bool], UnitOfWork]


@pytest.fixture(params=["in_memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def new_uow(request: pytest.FixtureRequest) -> AsyncIterator[NewUow]:
    """A unit-of-work factory taking ``debounce``."""
    if request.param == "in_memory":
        state = InMemoryState()
        yield lambda debounce: InMemoryUnitOfWork(
            state, "svc", coarse=debounced if debounce else published_at_once
        )
        return
    url = await create_database()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    assert pool is not None
    try:
        yield lambda debounce: PostgresUnitOfWork(
            pool, "svc", coarse=debounced if debounce else published_at_once
        )
    finally:
        await pool.close()
        await drop_database(url)


async def edit(new_uow: NewUow, order_id: UUID, line1: str, *, debounce: bool = True) -> None:
    async with new_uow(debounce) as uow:
        item = Item(str(order_id))
        item.record(AddressEdited(order_id=order_id, line1=line1))
        uow.track(item)
        await uow.commit()


async def waiting(new_uow: NewUow) -> list[tuple[str, str, int]]:
    async with new_uow(True) as uow:
        held = await uow.pending.waiting()
    return [
        (h.aggregate_id, h.event.shipping_address.line1, changes)  # type: ignore[attr-defined]
        for h, changes in held
    ]


async def outbox_size(new_uow: NewUow) -> int:
    async with new_uow(True) as uow:
        if isinstance(uow, PostgresUnitOfWork):
            count: int = await uow.conn.fetchval("SELECT count(*) FROM outbox")
            return count
        assert isinstance(uow, InMemoryUnitOfWork)
        return len(uow.working.outbox.envelopes)


async def test_a_burst_is_held_as_its_last_change_per_aggregate(new_uow: NewUow) -> None:
    first, second = uuid4(), uuid4()
    for n in range(1, 4):
        await edit(new_uow, first, f"a{n}")
    await edit(new_uow, second, "b1")
    assert await waiting(new_uow) == [(str(first), "a3", 3), (str(second), "b1", 1)]
    assert await outbox_size(new_uow) == 0


async def test_holds_of_one_transaction_count_as_that_many_changes_the_last_one_kept(
    new_uow: NewUow,
) -> None:
    """As a consumer applying a batch that changes one aggregate several times."""
    first, second = uuid4(), uuid4()
    await edit(new_uow, first, "a0")
    async with new_uow(True) as uow:
        items = {first: Item(str(first)), second: Item(str(second))}
        for item in items.values():
            uow.track(item)
        for n, (order_id, line1) in enumerate([(first, "a1"), (second, "b1"), (first, "a2")]):
            with correlated(f"change-{n}", f"cause-{n}"):
                items[order_id].record(AddressEdited(order_id=order_id, line1=line1))
                await uow.flush()  # each change held in the context it was made in
        await uow.commit()
    assert await waiting(new_uow) == [(str(first), "a2", 3), (str(second), "b1", 1)]
    async with new_uow(True) as uow:
        (last, _), _ = await uow.pending.waiting()
    assert (last.correlation_id, last.causation_id) == ("change-2", "cause-2")


async def test_a_rolled_back_change_is_not_held(new_uow: NewUow) -> None:
    order_id = uuid4()
    await edit(new_uow, order_id, "kept")
    async with new_uow(True) as uow:
        item = Item(str(order_id))
        item.record(AddressEdited(order_id=order_id, line1="rolled back"))
        uow.track(item)
        await uow.flush()  # held in the transaction, which then ends without a commit
    assert await waiting(new_uow) == [(str(order_id), "kept", 1)]


async def test_without_debounce_every_change_goes_to_the_outbox(new_uow: NewUow) -> None:
    order_id = uuid4()
    for n in range(1, 4):
        await edit(new_uow, order_id, f"a{n}", debounce=False)
    assert await waiting(new_uow) == []
    assert await outbox_size(new_uow) == 3
