"""The consumer's group commit: runs handed in while a transaction is in flight go together
in the next one; a failed transaction tells each run whether it failed alone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import uuid4

import pytest

from shared.consuming.group_commit import GroupCommit, Joined
from shared.consuming.processing import Delivery
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import new_envelope


def run_of(name: str, n: int = 1) -> list[Delivery]:
    return [
        Delivery(
            new_envelope(
                OrderRejected(order_id=uuid4(), reason=f"{name}{i}"),
                source="order",
                aggregate_id=name,
                sequence=i,
                correlation_id="c",
                causation_id=None,
            )
        )
        for i in range(1, n + 1)
    ]


def reasons(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.envelope.payload["reason"] for d in deliveries]


async def test_runs_handed_in_during_a_transaction_go_together_in_the_next_one() -> None:
    transactions: list[list[str]] = []
    first_started, release_first = asyncio.Event(), asyncio.Event()

    async def apply(deliveries: Sequence[Delivery]) -> None:
        transactions.append(reasons(deliveries))
        if len(transactions) == 1:
            first_started.set()
            await release_first.wait()

    group = GroupCommit(apply)
    committer = asyncio.create_task(group.run())
    try:
        first = asyncio.create_task(group.join(run_of("a", 2)))
        await first_started.wait()  # a transaction in flight: the next runs wait for it
        later = [asyncio.create_task(group.join(run_of(name))) for name in ("b", "c")]
        await asyncio.sleep(0.01)
        release_first.set()
        results = await asyncio.gather(first, *later)
    finally:
        committer.cancel()
    assert transactions == [["a1", "a2"], ["b1", "c1"]]
    assert results == [Joined.COMMITTED] * 3


@pytest.mark.parametrize(
    ("names", "expected"), [(["a"], Joined.FAILED_ALONE), (["a", "b"], Joined.FAILED_WITH_OTHERS)]
)
async def test_a_failed_transaction_tells_each_run_whether_others_were_in_it(
    names: list[str], expected: Joined
) -> None:
    gate = asyncio.Event()

    async def apply(deliveries: Sequence[Delivery]) -> None:
        await gate.wait()
        raise RuntimeError("a poison record somewhere in here")

    group = GroupCommit(apply)
    joined = [asyncio.create_task(group.join(run_of(name))) for name in names]
    committer = asyncio.create_task(group.run())  # starts with every run already handed in
    try:
        gate.set()
        assert await asyncio.gather(*joined) == [expected] * len(names)
    finally:
        committer.cancel()
