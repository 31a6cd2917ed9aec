"""What the benchmark reads from the running suite: CPU time from /proc, histograms from each
service's /metrics, and each order's outcome from the order service's database."""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from load.bench.httpclient import Client

TICKS = os.sysconf("SC_CLK_TCK")
TERMINAL = ("SHIPPED", "REJECTED", "CANCELLED")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) / TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant (PostgreSQL's backends,
    the JVM's threads are in-process); children that exited count through their parent."""
    parents: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = stat
    total, wanted = 0.0, {root}
    changed = True
    while changed:  # a few passes reach every descendant
        changed = False
        for pid, (parent, _) in parents.items():
            if parent in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        if pid in parents:
            total += parents[pid][1]
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, and of this load generator."""
    return {name: tree_cpu_seconds(pid) for name, pid in pids.items()} | {
        "load generator": own_cpu_seconds()
    }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Client) -> Samples:
    """Every sample of a service's ``/metrics``, keyed by name and sorted labels."""
    response = await client.request("GET", "/metrics")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bound -> count) of one histogram over an interval."""

    buckets: list[tuple[float, float]]

    @classmethod
    def between(cls, before: Samples, after: Samples, name: str, **labels: str) -> Histogram:
        """The observations made between two scrapes, summed over the labels not given."""
        counts: dict[float, float] = {}
        for (sample, sample_labels), value in after.items():
            label_map = dict(sample_labels)
            if sample != f"{name}_bucket" or any(label_map.get(k) != v for k, v in labels.items()):
                continue
            bound = float(label_map["le"])
            earlier = before.get((sample, sample_labels), 0.0)
            counts[bound] = counts.get(bound, 0.0) + value - earlier
        return cls(sorted(counts.items()))

    @classmethod
    def total(cls, histograms: Iterable[Histogram]) -> Histogram:
        counts: dict[float, float] = {}
        for histogram in histograms:
            for bound, count in histogram.buckets:
                counts[bound] = counts.get(bound, 0.0) + count
        return cls(sorted(counts.items()))

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float | None:
        """Linear interpolation within the bucket holding the quantile, as PromQL's
        ``histogram_quantile`` does; None without observations, inf past the last bound."""
        if self.count == 0:
            return None
        rank, lower, below = q * self.count, 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # beyond the last finite bucket: its bound is all we know
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, cumulative
        return None


def gauge_sum(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


@dataclass(frozen=True)
class Outcome:
    status: str
    seconds: float  # created_at -> updated_at: placed -> its current status


async def outcomes(
    connection: asyncpg.Connection, order_ids: Iterable[UUID]
) -> dict[UUID, Outcome]:
    """Status of each order and how long after its placing it reached it. Marked, and on a
    connection kept open, so the statement census can tell it from the suite's."""
    rows = await connection.fetch(
        """
        SELECT /* load.bench */ order_id, status,
            extract(epoch FROM updated_at - created_at) AS seconds
        FROM orders WHERE order_id = ANY($1::uuid[])
        """,
        list(order_ids),
    )
    return {row["order_id"]: Outcome(row["status"], float(row["seconds"])) for row in rows}


async def known_skus(database_url: str, skus: list[str]) -> int:
    """How many of ``skus`` the order service's catalog replica holds."""
    connection = await asyncpg.connect(database_url)
    try:
        count = await connection.fetchval(
            "SELECT /* load.bench */ count(*) FROM known_skus WHERE sku = ANY($1::text[])", skus
        )
    finally:
        await connection.close()
    return int(count)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of a list (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
