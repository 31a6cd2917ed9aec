"""The machine's speed and idle cost, measured in the same run as the steps: a fixed
pure-Python loop, ``pgbench -S`` on a scratch database, and the whole machine's busy time
with the suite running and no load. Wall-clock figures come with these, so a slow day
shows as a slow calibration rather than as a regression."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.postgres import client, psql
from infra.settings import HOST, InfraError, Ports
from load.bench.probe import TICKS

LOOP_ITERATIONS = 3_000_000  # about half a second on the 2-core VM of 2026-12-07
LOOP_REPEATS = 3
PGBENCH_TRANSACTIONS = 5_000
SCRATCH_DATABASE = "bench_calibration"


def python_loop() -> float:
    """CPU milliseconds of a fixed pure-Python workload (the best of a few runs: the
    machine's speed, not its noise)."""
    best = float("inf")
    for _ in range(LOOP_REPEATS):
        started = time.process_time()
        total, value = 0, 1
        for i in range(LOOP_ITERATIONS):
            value = (value * 31 + i) % 1_000_003
            total += value & 7
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


_LATENCY = re.compile(r"^latency average = ([\d.]+) ms$", re.MULTILINE)
_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)$", re.MULTILINE)


@dataclass(frozen=True)
class Pgbench:
    transactions: int
    tps: float
    latency_ms: float


def parse_pgbench(output: str, transactions: int) -> Pgbench:
    """The figures of ``pgbench``'s report; ValueError if it has none."""
    latency, tps = _LATENCY.search(output), _TPS.search(output)
    if latency is None or tps is None:
        raise ValueError(f"no latency or tps in pgbench's output: {output[-300:]!r}")
    return Pgbench(transactions, float(tps[1]), float(latency[1]))


def _pgbench_argv(ports: Ports, *args: str) -> list[str]:
    connection = ["-h", HOST, "-p", str(ports.postgres), "-U", "postgres"]
    return [str(client("pgbench")), *connection, *args]


def pgbench(ports: Ports, transactions: int = PGBENCH_TRANSACTIONS) -> Pgbench:
    """``pgbench -S`` (read-only, one client) for a fixed number of transactions on a scratch
    database, initialized (scale 1) the first time."""
    exists = subprocess.run(
        _pgbench_argv(ports, "-S", "-t", "1", "-n", SCRATCH_DATABASE),
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    if exists.returncode != 0:
        psql(ports, f"CREATE DATABASE {SCRATCH_DATABASE}")
        subprocess.run(
            _pgbench_argv(ports, "-i", "-q", "-s", "1", SCRATCH_DATABASE),
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
    result = subprocess.run(
        _pgbench_argv(ports, "-S", "-n", "-c", "1", "-t", str(transactions), SCRATCH_DATABASE),
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return parse_pgbench(result.stdout, transactions)


def machine_busy_seconds(stat: str | None = None) -> tuple[float, float]:
    """(busy, total) CPU seconds of every core so far, from ``/proc/stat``'s ``cpu`` line
    (idle and iowait are not busy; guest time is already in user)."""
    text = stat if stat is not None else Path("/proc/stat").read_text()
    line = next(line for line in text.splitlines() if line.startswith("cpu "))
    ticks = [int(value) for value in line.split()[1:9]]  # user .. steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / TICKS, sum(ticks) / TICKS


@dataclass(frozen=True)
class Idle:
    """The machine with the suite running and no load."""

    seconds: float
    busy_cores: float  # busy CPU seconds per second: 0.11 is 11% of one core


def marginal_ms_per_order(
    busy_seconds: float, wall_seconds: float, idle_busy_cores: float, orders: int
) -> float | None:
    """CPU milliseconds per order above what the machine spends idle over the same time."""
    if orders == 0:
        return None
    return round((busy_seconds - idle_busy_cores * wall_seconds) * 1000 / orders, 2)


async def idle(seconds: float) -> Idle:
    """Busy cores over ``seconds`` of no load (the services' background loops, the brokers,
    PostgreSQL, Jaeger and whatever else runs on the machine)."""
    busy_before, _ = machine_busy_seconds()
    started = time.monotonic()
    await asyncio.sleep(seconds)
    busy_after, _ = machine_busy_seconds()
    elapsed = time.monotonic() - started
    return Idle(round(elapsed, 1), round((busy_after - busy_before) / elapsed, 3))


@dataclass(frozen=True)
class Baseline:
    """What a step's CPU is compared with: the idle machine and the calibration."""

    idle_busy_cores: float | None = None
    python_loop_ms: float | None = None
    pgbench_ms_per_transaction: float | None = None


@dataclass(frozen=True)
class MachineCpu:
    """A step's whole-machine CPU (every process, the load generator's own taken out)."""

    busy_cores: float  # over the step, offering and draining
    idle_busy_cores: float | None  # the same machine with no load, before the steps
    ms_per_order: float | None
    marginal_ms_per_order: float | None  # above idle
    per_python_loop: float | None  # ms per order / the calibration loop's ms
    per_pgbench_transaction: float | None  # ms per order / one pgbench -S transaction's ms


def machine_cpu(
    busy_seconds: float, own_seconds: float, wall_seconds: float, orders: int, base: Baseline
) -> MachineCpu:
    used = busy_seconds - own_seconds
    per_order = round(used * 1000 / orders, 2) if orders else None
    marginal = (
        None
        if base.idle_busy_cores is None
        else marginal_ms_per_order(used, wall_seconds, base.idle_busy_cores, orders)
    )

    def ratio(unit: float | None) -> float | None:
        return None if per_order is None or not unit else round(per_order / unit, 3)

    return MachineCpu(
        busy_cores=round(busy_seconds / wall_seconds, 3) if wall_seconds else 0.0,
        idle_busy_cores=base.idle_busy_cores,
        ms_per_order=per_order,
        marginal_ms_per_order=marginal,
        per_python_loop=ratio(base.python_loop_ms),
        per_pgbench_transaction=ratio(base.pgbench_ms_per_transaction),
    )


@dataclass(frozen=True)
class Calibration:
    """The machine's speed this run: lower is faster."""

    python_loop_ms: float | None
    pgbench: Pgbench | None

    def baseline(self, idle: Idle) -> Baseline:
        return Baseline(
            idle_busy_cores=idle.busy_cores,
            python_loop_ms=self.python_loop_ms,
            pgbench_ms_per_transaction=None if self.pgbench is None else self.pgbench.latency_ms,
        )

    def describe(self) -> str:
        loop = "-" if self.python_loop_ms is None else f"{self.python_loop_ms:.0f} ms"
        bench = (
            "-"
            if self.pgbench is None
            else f"{self.pgbench.latency_ms:.3f} ms/transaction ({self.pgbench.tps:.0f} tps)"
        )
        return f"Python loop {loop}, pgbench -S {bench}"


def calibrate(ports: Ports) -> Calibration:
    """The Python loop, then ``pgbench -S`` (None where pgbench is missing or fails)."""
    loop = python_loop()
    try:
        bench: Pgbench | None = pgbench(ports)
    except (OSError, subprocess.SubprocessError, ValueError, InfraError):
        bench = None
    return Calibration(loop, bench)
