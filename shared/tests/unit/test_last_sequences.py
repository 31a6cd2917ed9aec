"""The outbox's memory of the last sequence this process committed per aggregate: bounded,
most recent kept, and only written once a transaction commits (a rolled-back write must not
leave a guess ahead of the database; the statement would reject it, at a round trip's cost)."""

from __future__ import annotations

from shared.contracts.catalog import OrderRejected
from shared.testing.fakes import InMemoryOutbox, InMemoryOutboxState
from shared.writing.outbox import LastSequences

REJECTED = OrderRejected(order_id="00000000-0000-0000-0000-000000000001", reason="r")


def test_it_keeps_the_most_recent_aggregates_and_forgets_on_demand() -> None:
    known = LastSequences(capacity=2)
    known.remember({("order", "a"): 1, ("order", "b"): 4})
    known.remember({("order", "a"): 2, ("order", "c"): 1})  # a is used again: b is the oldest
    assert [known.get(("order", k)) for k in "abc"] == [2, None, 1]
    known.forget([("order", "a")])
    assert known.get(("order", "a")) is None


async def test_a_write_is_remembered_only_once_committed() -> None:
    state = InMemoryOutboxState()
    outbox = InMemoryOutbox(state, "order")
    await outbox.append(REJECTED, aggregate_id="a", new_aggregate=True)
    await outbox.write()
    assert state.known.get(("order", "a")) is None
    await outbox.committed()
    assert state.known.get(("order", "a")) == 1
