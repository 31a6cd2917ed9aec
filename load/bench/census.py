"""Counts of work per order that do not move with the machine's speed: statements and
transactions across the three databases, relay batches and consumer fetches, spans and log
lines. The benchmark reads them at a step's start and end; their difference over the
accepted orders is the regression metric of docs/benchmark.md."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import asyncpg

from infra.settings import SERVICES, log_path
from load.bench.probe import Samples, gauge_sum

# Marks the benchmark's own statements in the services' databases, so the census leaves
# them out (pg_stat_statements keeps the text, comment included).
MARK = "/* load.bench */"
# What a span may take to reach Jaeger: the services' BatchSpanProcessor exports every 5 s.
SPAN_EXPORT_SECONDS = 6.0


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of the whole suite at one moment (None: not available here)."""

    statements: float | None = None
    transactions: float | None = None
    relay_batches: float | None = None
    fetches: float | None = None
    log_lines: float | None = None


def per_order(
    before: Counters, after: Counters, orders: int, spans: float | None = None
) -> dict[str, float | None]:
    """Each counter's increase over the accepted orders (None where either end lacks it);
    ``spans`` is already a count over the step."""
    result: dict[str, float | None] = {}
    for item in fields(Counters):
        start, end = getattr(before, item.name), getattr(after, item.name)
        result[item.name] = (
            None
            if start is None or end is None or orders == 0
            else round((end - start) / orders, 2)
        )
    result["spans"] = None if spans is None or orders == 0 else round(spans / orders, 2)
    return result


def kafka_counts(metrics: Mapping[str, Samples]) -> tuple[float, float]:
    """(relay batches published, consumer fetches that returned records), every process."""
    batches = sum(gauge_sum(s, "outbox_relay_publish_seconds_count") for s in metrics.values())
    fetches = sum(gauge_sum(s, "consumer_fetches_total") for s in metrics.values())
    return batches, fetches


class Database:
    """The statistics views of the cluster, read from its ``postgres`` database: statement
    calls (``pg_stat_statements``) and transactions (``pg_stat_database``) of the three
    services' databases, less the benchmark's own."""

    def __init__(self, service_database_url: str) -> None:
        self._url = service_database_url.rsplit("/", 1)[0] + "/postgres"
        self._statements = True

    async def reset(self) -> None:
        """Empty ``pg_stat_statements`` (it then holds only the step's statements)."""
        connection = await asyncpg.connect(self._url)
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await connection.execute("SELECT pg_stat_statements_reset()")
        except asyncpg.PostgresError:  # not in shared_preload_libraries (an older cluster)
            self._statements = False
        finally:
            await connection.close()

    async def counts(self) -> tuple[float | None, float]:
        """(statements, transactions) so far in the services' databases. The benchmark's
        own statements run on a connection that has them prepared: one transaction each."""
        connection = await asyncpg.connect(self._url)
        try:
            transactions = await connection.fetchval(
                "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database"
                " WHERE datname = ANY($1::text[])",
                list(SERVICES),
            )
            if not self._statements:
                return None, float(transactions)
            rows = await connection.fetch(
                """
                SELECT s.query LIKE $2 AS ours, sum(s.calls) AS calls
                FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                WHERE d.datname = ANY($1::text[]) GROUP BY 1
                """,
                list(SERVICES),
                f"%{MARK}%",
            )
        finally:
            await connection.close()
        calls = {row["ours"]: float(row["calls"]) for row in rows}
        return calls.get(False, 0.0), float(transactions) - calls.get(True, 0.0)


def log_sizes(processes: Iterable[str]) -> dict[str, int]:
    """Where each process's log file ends now."""
    return {name: _size(log_path(name)) for name in processes}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_lines_since(sizes: Mapping[str, int]) -> int:
    """Lines the processes logged since ``sizes`` (every log line ends in a newline)."""
    lines = 0
    for name, offset in sizes.items():
        try:
            with log_path(name).open("rb") as file:
                file.seek(offset)
                lines += file.read().count(b"\n")
        except OSError:
            continue
    return lines


def spans_between(jaeger_url: str, start: float, end: float) -> int | None:
    """Spans every service started between two wall-clock times, from Jaeger's query API
    (its in-memory store): each trace once, whichever service's search found it."""
    seen: dict[str, int] = {}
    # The limit must stay below the memory store's max_traces (infra/jaeger/config.yaml).
    window = f"start={int(start * 1e6)}&end={int(end * 1e6)}&limit=50000"
    try:
        with urllib.request.urlopen(f"{jaeger_url}/api/services", timeout=10) as response:
            known: list[str] = json.load(response)["data"] or []
    except (OSError, ValueError, KeyError):
        return None
    # "order-service", "order-2" and the like: the suite's processes, not a test's.
    for service in (k for k in known if k.startswith(SERVICES)):
        try:
            with urllib.request.urlopen(
                f"{jaeger_url}/api/traces?service={service}&{window}", timeout=60
            ) as response:
                traces = json.load(response)["data"]
        except (OSError, ValueError, KeyError):
            return None
        for trace in traces:
            seen[trace["traceID"]] = sum(
                1 for span in trace["spans"] if start * 1e6 <= span["startTime"] <= end * 1e6
            )
    return sum(seen.values())


async def spans_after_export(jaeger_url: str, start: float, end: float, now: float) -> int | None:
    """:func:`spans_between`, once the spans started before ``end`` have been exported."""
    await asyncio.sleep(max(0.0, end + SPAN_EXPORT_SECONDS - now))
    return await asyncio.to_thread(spans_between, jaeger_url, start, end)
