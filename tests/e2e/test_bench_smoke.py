"""A seconds-long run of the benchmark's harness over the e2e suite, so ``make bench``
cannot rot between runs. Its figures are not the benchmark's: the suite here runs with the
test timings (a 1.5 s dispatch delay), and the step is too short for a steady state."""

from __future__ import annotations

import json
import random
from pathlib import Path

from infra.settings import SERVICES
from load.bench.report import write
from load.bench.run import Suite as Bench
from load.bench.run import run_step
from tests.e2e.conftest import Suite


async def test_one_short_step_measures_every_figure_and_writes_the_report(
    suite: Suite, tmp_path: Path
) -> None:
    bench = Bench()
    await bench.stock_up(1000)
    try:
        step = await run_step(bench, "smoke", rate=10, seconds=2, rng=random.Random(1))
    finally:
        await bench.close()

    assert step.sent > 5
    assert step.accepted == step.sent
    assert step.drained_seconds is not None  # every order reached a terminal status
    assert step.shipped_ms["p50"] is not None
    assert step.shipped_ms["p50"] >= 1500  # the test suite's dispatch delay shows
    assert step.relay_ms["p99"] is not None
    assert step.confirmed_ms["p50"] is not None
    assert set(step.cpu_ms_per_order) >= {*SERVICES, "postgres", "kafka", "load generator"}
    assert all(ms > 0 for name, ms in step.cpu_ms_per_order.items() if name in SERVICES)

    # The counts per order: every order takes statements and transactions in each database,
    # a relay batch and a fetch per hop at this rate, spans across three services.
    counted = step.per_order
    least = {"statements": 10, "transactions": 3, "relay_batches": 1, "fetches": 1, "spans": 3}
    short = {
        name: counted[name] for name, floor in least.items() if not (counted[name] or 0) >= floor
    }
    assert short == {}
    assert counted["log_lines"] is not None
    assert step.machine is not None
    assert step.machine.ms_per_order is not None
    assert step.machine.ms_per_order > 0

    path = write([step], {"smoke": True}, tmp_path)
    document = json.loads(path.read_text())
    assert document["steps"][0]["accepted"] == step.accepted
    assert document["steps"][0]["per_order"] == counted
    assert document["summary"]["highest_sustained_orders_per_s"] == {"smoke": 0.0}
    assert path.with_suffix(".png").stat().st_size > 10_000
