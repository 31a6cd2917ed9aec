"""Group commit: the records partitions have in hand are applied together, in one transaction
(one commit, a few set-based statements for the lot: see ``EventProcessor.process_batch``),
each partition's in order. One such transaction runs at a time; the runs handed in while it
is in flight go in the next one, so nothing waits to be grouped when the consumer keeps up,
and under load each transaction carries more. When one fails, each run in it hears whether it
failed alone or with others' (what follows is :mod:`shared.consuming.applying`'s)."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence

from shared.consuming.processing import Delivery

# The consumer's lines go under one logger, whichever of its parts writes them.
log = logging.getLogger("shared.consuming.consumer")


class Joined(enum.Enum):
    COMMITTED = "committed"
    FAILED_ALONE = "failed alone"
    FAILED_WITH_OTHERS = "failed with others"


class GroupCommit:
    """Runs of records that partitions' tasks hand in while a transaction is in flight go
    together in the next one: the records of many partitions, each partition's in order, in
    one transaction. Nothing waits to be grouped: a run handed in while the transaction
    slot is free starts at once, alone, so grouping happens only under load, when it saves
    the most. If the transaction fails, every run in it hears so, and is applied on its own
    (where a poison record is isolated, retried and dead-lettered)."""

    def __init__(self, apply: Callable[[Sequence[Delivery]], Awaitable[None]]) -> None:
        self._apply = apply
        self._waiting: list[tuple[Sequence[Delivery], asyncio.Future[Joined]]] = []
        self._handed_in = asyncio.Event()

    async def join(self, run: Sequence[Delivery]) -> Joined:
        joined: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        self._waiting.append((run, joined))
        self._handed_in.set()
        return await joined

    async def run(self) -> None:
        try:
            while True:
                await self._handed_in.wait()
                self._handed_in.clear()
                taken, self._waiting = self._waiting, []
                taken = [(run, joined) for run, joined in taken if not joined.done()]
                if taken:
                    await self._commit(taken)
        finally:
            for _, joined in self._waiting:
                joined.cancel()

    async def _commit(self, taken: list[tuple[Sequence[Delivery], asyncio.Future[Joined]]]) -> None:
        try:
            await self._apply([delivery for run, _ in taken for delivery in run])
            outcome = Joined.COMMITTED
        except Exception as exc:
            outcome = Joined.FAILED_ALONE if len(taken) == 1 else Joined.FAILED_WITH_OTHERS
            log.info("transaction of %d run(s) rolled back (%r); each on its own", len(taken), exc)
        for _, joined in taken:
            if not joined.done():
                joined.set_result(outcome)
