"""The benchmark's outputs: a table row per step as it finishes, a summary with the highest
sustained rate and the two ratios, a JSON file and a plot in ``reports/bench/``."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.settings import KAFKA_BROKERS, REPO, SERVICES
from load.bench.calibrate import Calibration
from load.bench.run import SETTLE_SECONDS, SHIPPED_P99_LIMIT, Step

REPORTS = REPO / "reports" / "bench"
HEADER = (
    f"{'variant':<20} {'offered':>7} {'achieved':>8} {'POST p50/p99':>13} "
    f"{'CONFIRMED p50/p99':>17} {'SHIPPED p50/p95/p99':>19} {'relay p50/p99':>13} "
    f"{'lag':>5} {'drained':>7} {'svc CPU':>7} {'pg CPU':>6}  ok  | per order: "
    f"{'stmts':>6} {'xacts':>5} {'relay':>5} {'fetch':>5} {'spans':>5} {'logs':>5} "
    f"{'CPU ms':>6} {'>idle':>6} {'/loop':>6}"
)
# The per-order counts, in the order of the table's columns.
COUNTS = ("statements", "transactions", "relay_batches", "fetches", "spans", "log_lines")


def _pair(*values: float | None) -> str:
    return "/".join("-" if v is None else f"{v:.0f}" for v in values)


def _number(value: float | None, width: int, places: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{places}f}"


def counts(step: Step) -> str:
    """The columns that do not move with the machine's speed, then the CPU beside them."""
    widths = (6, 5, 5, 5, 5, 5)
    cells = [_number(step.per_order.get(n), w) for n, w in zip(COUNTS, widths, strict=True)]
    machine = step.machine
    cells += [
        _number(None if machine is None else machine.ms_per_order, 6),
        _number(None if machine is None else machine.marginal_ms_per_order, 6),
        _number(None if machine is None else machine.per_python_loop, 6, 3),
    ]
    return " ".join(cells)


def row(step: Step) -> str:
    drained = "-" if step.drained_seconds is None else f"{step.drained_seconds:.1f}s"
    return (
        f"{step.variant:<20} {step.offered:>7.0f} {step.achieved:>8.1f} "
        f"{_pair(step.post_ms['p50'], step.post_ms['p99']):>13} "
        f"{_pair(step.confirmed_ms['p50'], step.confirmed_ms['p99']):>17} "
        f"{_pair(*step.shipped_ms.values()):>19} "
        f"{_pair(step.relay_ms['p50'], step.relay_ms['p99']):>13} "
        f"{step.lag_after_settle:>5.0f} {drained:>7} {step.service_cpu_ms:>7.1f} "
        f"{step.cpu_ms_per_order.get('postgres', 0.0):>6.1f}  "
        f"{'yes' if step.sustained else 'NO ':<3} | per order: {counts(step)}"
    )


def highest_sustained(steps: list[Step], variant: str) -> float:
    """The highest rate sustained before the variant's first failing step (0 if none)."""
    best = 0.0
    for step in (s for s in steps if s.variant == variant):
        if not step.sustained:
            break
        best = step.offered
    return best


def summary(steps: list[Step]) -> dict[str, Any]:
    variants = list(dict.fromkeys(s.variant for s in steps))
    best = {v: highest_sustained(steps, v) for v in variants}
    result: dict[str, Any] = {"highest_sustained_orders_per_s": best}
    base = variants[0] if variants else None
    # Service CPU per order at the highest rate every variant sustained: a finer ratio than
    # the steps of the ladder allow.
    common = min(best.values()) if best else 0.0
    at_common = {s.variant: s.service_cpu_ms for s in steps if s.offered == common and s.sustained}
    ratios: dict[str, Any] = {}
    for other in variants[1:]:
        if base is None:
            break
        ratios[f"{base} / {other}"] = {
            "sustained_rate": round(best[base] / best[other], 2) if best[other] else None,
            "service_cpu_per_order_inverse": (
                round(at_common[other] / at_common[base], 2)
                if base in at_common and other in at_common and at_common[base]
                else None
            ),
            "at_rate": common,
        }
    result["ratios"] = ratios
    return result


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "kafka_brokers": KAFKA_BROKERS,  # every node on this machine, replication included
    }


def write(
    steps: list[Step],
    plan: dict[str, Any],
    folder: Path = REPORTS,
    calibration: Calibration | None = None,
) -> Path:
    """The JSON file and its plot; returns the JSON file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "when": stamp,
        "machine": machine(),
        "plan": plan,
        "criteria": {
            "settle_seconds": SETTLE_SECONDS,
            "shipped_p99_limit_seconds": SHIPPED_P99_LIMIT,
        },
        "calibration": None if calibration is None else asdict(calibration),
        "summary": summary(steps),
        "steps": [asdict(s) | {"sustained": s.sustained} for s in steps],
    }
    path = folder / f"bench-{stamp}.json"
    path.write_text(json.dumps(document, indent=2))
    plot(steps, path.with_suffix(".png"))
    return path


def plot(steps: list[Step], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - heavy, and only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    variants = list(dict.fromkeys(s.variant for s in steps))
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant in variants:
        mine = [s for s in steps if s.variant == variant]
        rates = [s.offered for s in mine]
        p99 = [s.shipped_ms["p99"] for s in mine]
        latency.plot(rates, p99, marker="o", label=f"{variant}: placed → SHIPPED p99")
        cpu.plot(rates, [s.service_cpu_ms for s in mine], marker="o", label=f"{variant}: services")
    base = [s for s in steps if s.variant == variants[0]] if variants else []
    for name in ("postgres", "kafka", "jaeger", "load generator"):
        # "kafka": every node of the cluster together.
        values = [
            sum(ms for n, ms in s.cpu_ms_per_order.items() if n.split("-")[0] == name) for s in base
        ]
        cpu.plot([s.offered for s in base], values, linestyle="--", label=name)
    latency.axhline(SHIPPED_P99_LIMIT * 1000, color="grey", linestyle=":", label="1 s limit")
    latency.set(xlabel="offered orders/s", ylabel="ms", yscale="log", title="latency")
    cpu.set(xlabel="offered orders/s", ylabel="CPU ms per order", title="CPU per order")
    for axes in (latency, cpu):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    services = ", ".join(SERVICES)
    figure.suptitle(f"make bench: {services} on {os.cpu_count()} cores", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
