"""``python -m load.bench.micro`` against the real database, for a few events, so it cannot rot.
In a process of its own: it sets the process's logging and tracer provider."""

from __future__ import annotations

import subprocess
import sys


def test_the_micro_benchmark_prints_cpu_per_event_for_each_combination() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "load.bench.micro", "--events", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert [line[:9] for line in lines] == ["batch   1", "batch  10"] * 2
    assert all(float(line.split()[-6]) > 0 for line in lines)
