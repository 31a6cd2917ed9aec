"""The load suite end to end: a short run under the nemesis keeps every invariant, a run under
the pitfalls' provocations with every protection on keeps them too, and the checker catches
each pitfall mode under the nemesis action that provokes it.

Every run restarts the suite behind the fault proxies; the module ends by restarting the
services as ``make start`` runs them. About seven minutes in all on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import KAFKA_BROKERS
from load.run import Options, restart_plain, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def plain_services_afterwards() -> Iterator[None]:
    yield
    restart_plain()


async def test_a_short_run_under_the_nemesis_keeps_every_invariant(tmp_path: Path) -> None:
    # Seed 26 draws a partition leader's kill first, then the active controller's, a replay
    # and pauses (on three nodes; with KAFKA_BROKERS=1, the actions of one broker).
    options = Options(duration=75, rate=8, users=8, mean_interval=5, seed=26, root=tmp_path)
    run_dir, verdict = await run(options)
    assert verdict.failed() == [], verdict
    survived = {e.action for e in run_dir.nemesis() if e.phase == "end" and e.action != "heal"}
    assert len(survived) >= 4, run_dir.nemesis()
    if KAFKA_BROKERS >= 3:
        assert {"leader", "controller"} <= survived, run_dir.nemesis()
    accepted = [e for e in run_dir.journal() if e.op == "order" and e.status == 202]
    assert len(accepted) > 100
    assert (run_dir.path / "report.html").is_file()


# pitfall mode -> the nemesis action that provokes it -> the checks that must then fail.
PITFALL_RUNS = {
    # The order service killed between a commit and its publish: the events are lost (which
    # ones depends on the transaction hit: an OrderShipped lost leaves the order SHIPPED, an
    # OrderPlaced lost leaves it PENDING; the event counts see either).
    "naive dual write under a kill after commit": (
        {"PITFALL_NAIVE_DUAL_WRITE": "true"},
        ("failpoint:order:uow.after_commit",),
        {"9 event counts"},
    ),
    # Old events of the run delivered again after newer ones: the state machines absorb the
    # order, reservation and shipment events, but the order service's catalog of stock levels
    # takes the last level it is given, a stale one.
    "no dedup and no sequence check under a replay": (
        {"PITFALL_NO_DEDUP": "true", "PITFALL_NO_SEQUENCE_CHECK": "true"},
        ("replay",),
        {"4 services agree"},
    ),
    "auto-commit under consumer kills": (
        {"PITFALL_AUTO_COMMIT": "true"},
        ("failpoint:inventory:consumer.before_db_commit:2",),
        {"1 orders terminal"},
    ),
}


def short_run(
    root: Path, actions: tuple[str, ...], *, duration: float, pitfalls: dict[str, str] | None = None
) -> Options:
    """A small run aimed at ``actions`` (seed 5), with a short drain: a pitfall run loses
    orders for good, and waiting longer for them tells nothing more."""
    return Options(
        duration=duration,
        rate=8,
        users=4,
        actions=actions,
        mean_interval=4,
        seed=5,
        pitfalls=pitfalls or {},
        drain_timeout=90,
        quiet_seconds=10,
        root=root,
    )


async def test_with_the_protections_on_the_pitfalls_provocations_break_nothing(
    tmp_path: Path,
) -> None:
    """One run under the three provocations of PITFALL_RUNS (seed 5 draws each of them in
    its first three actions)."""
    actions = tuple(a for _, provoking, _ in PITFALL_RUNS.values() for a in provoking)
    run_dir, verdict = await run(short_run(tmp_path, actions, duration=50))
    done = {(e.action, e.target) for e in run_dir.nemesis() if e.phase == "end"}
    assert {("failpoint", "order"), ("failpoint", "inventory"), ("replay", "topics")} <= done
    assert verdict.failed() == [], verdict


@pytest.mark.parametrize("case", list(PITFALL_RUNS))
async def test_the_checker_sees_each_pitfall(case: str, tmp_path: Path) -> None:
    pitfalls, actions, broken = PITFALL_RUNS[case]
    run_dir, verdict = await run(short_run(tmp_path, actions, duration=25, pitfalls=pitfalls))
    done = [e for e in run_dir.nemesis() if e.phase == "end" and e.action != "heal"]
    assert done, "the nemesis did nothing"
    assert broken <= set(verdict.failed()), verdict
