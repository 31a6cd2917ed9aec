"""The benchmark's own arithmetic and its HTTP client, without the suite (unit tier)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import uuid4

import pytest

from load.bench import calibrate, census
from load.bench.calibrate import (
    Baseline,
    machine_busy_seconds,
    machine_cpu,
    marginal_ms_per_order,
    parse_pgbench,
    python_loop,
)
from load.bench.census import Counters, kafka_counts, per_order
from load.bench.cli import settings
from load.bench.httpclient import Client, HttpError
from load.bench.load import Sent, schedule
from load.bench.probe import TICKS, Histogram, Samples, percentile
from load.bench.report import counts, highest_sustained, row, summary
from load.bench.run import Step, _figures


def test_the_schedule_is_seeded_and_offers_the_rate() -> None:
    first = schedule(100, 60, random.Random(1))
    assert first == schedule(100, 60, random.Random(1))
    assert first != schedule(100, 60, random.Random(2))
    assert 5700 < len(first) < 6300  # Poisson: 6,000 expected, a few standard deviations
    assert first == sorted(first)
    assert first[0] > 0
    assert first[-1] < 60


def histogram(**counts: float) -> Histogram:
    """Cumulative buckets from ``le_<bound>=count`` pairs."""
    return Histogram(sorted((float(k[3:].replace("_", ".")), v) for k, v in counts.items()))


def test_histogram_quantiles_interpolate_within_a_bucket_as_promql_does() -> None:
    h = histogram(le_0_1=50, le_0_2=90, le_1=100, le_inf=100)
    assert h.quantile(0.5) == pytest.approx(0.1)
    assert h.quantile(0.7) == pytest.approx(0.15)
    assert h.quantile(0.95) == pytest.approx(0.6)
    assert histogram(le_1=0, le_inf=10).quantile(0.5) == 1.0  # past the last bound
    assert Histogram([]).quantile(0.5) is None


def test_histograms_between_two_scrapes_count_only_what_happened_between() -> None:
    key = ("x_bucket", (("le", "0.1"), ("service", "order")))
    inf = ("x_bucket", (("le", "+Inf"), ("service", "order")))
    h = Histogram.between({key: 5, inf: 7}, {key: 15, inf: 27}, "x", service="order")
    assert h.buckets == [(0.1, 10), (float("inf"), 20)]
    assert Histogram.total([h, h]).buckets == [(0.1, 20), (float("inf"), 40)]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile([], 0.5) is None


def step(variant: str, offered: float, shipped_p99: float, cpu: float, settled: float = 1) -> Step:
    return Step(
        variant=variant, offered=offered, seconds=10, sent=10, accepted=10, achieved=offered,
        post_ms={"p50": 1, "p99": 2}, confirmed_ms={}, shipped_ms={"p99": shipped_p99},
        relay_ms={}, terminal_within_settle=settled, lag_after_settle=0, drained_seconds=1,
        cpu_ms_per_order={"order": cpu, "postgres": 1},
    )  # fmt: skip


def test_a_step_is_sustained_only_when_everything_settles_and_p99_is_under_a_second() -> None:
    assert step("a", 10, 999, 1).sustained
    assert not step("a", 10, 1000, 1).sustained
    assert not step("a", 10, 100, 1, settled=0.99).sustained


def test_the_highest_sustained_rate_stops_at_the_first_failing_step_and_ratios_compare() -> None:
    steps = [
        step("outbox", 10, 100, 4), step("outbox", 20, 2000, 4), step("outbox", 30, 100, 4),
        step("naive", 10, 100, 2), step("naive", 20, 100, 2),
    ]  # fmt: skip
    assert highest_sustained(steps, "outbox") == 10
    assert highest_sustained(steps, "naive") == 20
    ratios = summary(steps)["ratios"]["outbox / naive"]
    assert ratios == {"sustained_rate": 0.5, "service_cpu_per_order_inverse": 0.5, "at_rate": 10}


async def test_the_client_reuses_one_connection_and_reads_each_answer() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client("127.0.0.1", port)
    try:
        for n in range(3):
            response = await client.request("POST", "/echo", b'{"n": %d}' % n)
            assert (response.status, response.body) == (202, b'{"n": %d}' % n)
        assert connections == 1
    finally:
        client.close()
        server.close()


async def test_the_client_reports_a_server_that_hangs_up() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    client = Client("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(HttpError):
            await client.request("GET", "/")
    finally:
        server.close()


def test_with_two_instances_each_service_s_figures_add_up_both() -> None:
    def confirmed(count: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        name = "aggregate_status_age_seconds_bucket"
        return {
            (name, (("le", "0.1"), ("status", "CONFIRMED"))): count,
            (name, (("le", "+Inf"), ("status", "CONFIRMED"))): count,
        }

    before = {"order": confirmed(0), "order-2": confirmed(0)}
    after = {"order": confirmed(0), "order-2": confirmed(4)}  # all confirmed by the second
    sent = [Sent(0.0, 0.01, 202, uuid4()) for _ in range(10)]
    cpu_before = {"order": 1.0, "order-2": 1.0, "postgres": 5.0}
    cpu_after = {"order": 1.1, "order-2": 1.2, "postgres": 5.5}
    step = _figures(
        "two", 10, 1, sent, {}, (1.0, 0.0, 0.5), (cpu_before, cpu_after), (before, after)
    )
    assert step.cpu_ms_per_order == {"order": 30.0, "postgres": 50.0}  # (0.1 + 0.2) s / 10
    assert step.confirmed_ms["p50"] is not None
    assert step.service_cpu_ms == 30.0


# --- counts per order, calibration, idle ----------------------------------------------------


def test_counts_per_order_are_the_counters_increase_over_the_accepted_orders() -> None:
    before = Counters(statements=1000, transactions=200, relay_batches=50, fetches=7, log_lines=0)
    after = Counters(statements=1770, transactions=284, relay_batches=80, fetches=37, log_lines=40)
    assert per_order(before, after, orders=10, spans=305) == {
        "statements": 77.0, "transactions": 8.4, "relay_batches": 3.0, "fetches": 3.0,
        "log_lines": 4.0, "spans": 30.5,
    }  # fmt: skip


def test_a_count_missing_at_either_end_or_a_step_without_orders_gives_no_figure() -> None:
    without_statements = Counters(None, 200, 50, 7, 0)
    figures = per_order(without_statements, Counters(1770, 284, 80, 37, 40), orders=10)
    assert figures["statements"] is None
    assert figures["spans"] is None
    assert figures["transactions"] == 8.4
    assert set(per_order(Counters(1, 1, 1, 1, 1), Counters(2, 2, 2, 2, 2), orders=0).values()) == {
        None
    }


def test_relay_batches_and_fetches_add_up_every_process() -> None:
    def samples(batches: float, fetches: float) -> Samples:
        return {
            ("outbox_relay_publish_seconds_count", (("service", "x"),)): batches,
            ("consumer_fetches_total", (("service", "x"),)): fetches,
            ("consumer_fetches_created", (("service", "x"),)): 1.7e9,  # not a count
        }

    assert kafka_counts({"order": samples(3, 10), "order-2": samples(4, 20)}) == (7, 30)


PGBENCH_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 1
number of threads: 1
maximum number of tries: 1
number of transactions per client: 5000
number of transactions actually processed: 5000/5000
number of failed transactions: 0 (0.000%)
latency average = 0.117 ms
initial connection time = 2.345 ms
tps = 8563.123456 (without initial connection time)
"""


def test_pgbench_s_report_gives_its_latency_and_rate() -> None:
    result = parse_pgbench(PGBENCH_OUTPUT, 5000)
    assert (result.latency_ms, result.tps, result.transactions) == (0.117, 8563.123456, 5000)
    with pytest.raises(ValueError, match="no latency"):
        parse_pgbench("pgbench: error: connection refused", 5000)


def test_the_python_loop_reports_the_cpu_time_of_a_fixed_workload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calibrate, "LOOP_ITERATIONS", 200_000)
    small = python_loop()
    monkeypatch.setattr(calibrate, "LOOP_ITERATIONS", 2_000_000)
    assert python_loop() > 3 * small > 0  # ten times the work: several times the time


def test_machine_busy_time_leaves_out_idle_and_iowait() -> None:
    stat = "cpu  100 5 20 1000 50 3 2 0 0 0\ncpu0 50 2 10 500 25 1 1 0 0 0\n"
    busy, total = machine_busy_seconds(stat)
    assert busy == pytest.approx((100 + 5 + 20 + 3 + 2) / TICKS)
    assert total == pytest.approx(1180 / TICKS)


def test_marginal_cpu_takes_out_what_the_idle_machine_spends_over_the_same_time() -> None:
    # 20 s at 0.1 busy cores idle is 2 s; the step used 6 s for 100 orders: 40 ms above idle.
    assert marginal_ms_per_order(6.0, 20.0, 0.1, 100) == 40.0
    assert marginal_ms_per_order(6.0, 20.0, 0.1, 0) is None


def test_machine_cpu_per_order_leaves_out_the_load_generator_and_compares_with_calibration() -> (
    None
):
    base = Baseline(idle_busy_cores=0.1, python_loop_ms=200.0, pgbench_ms_per_transaction=0.1)
    figures = machine_cpu(7.0, 1.0, 20.0, 100, base)  # 7 s busy, 1 s of it the load generator
    assert figures.ms_per_order == 60.0
    assert figures.marginal_ms_per_order == 40.0
    assert figures.busy_cores == 0.35
    assert figures.idle_busy_cores == 0.1
    assert figures.per_python_loop == 0.3  # 60 ms per order / a 200 ms loop
    assert figures.per_pgbench_transaction == 600.0
    unknown = machine_cpu(7.0, 1.0, 20.0, 100, Baseline())
    assert (unknown.marginal_ms_per_order, unknown.per_python_loop) == (None, None)


def test_log_lines_are_counted_from_where_each_file_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(census, "log_path", lambda name: tmp_path / f"{name}.log")
    (tmp_path / "order.log").write_text("old\nold\n")
    sizes = census.log_sizes(["order", "inventory"])  # inventory has no file yet
    with (tmp_path / "order.log").open("a") as file:
        file.write("new 1\nnew 2\nnew 3\n")
    (tmp_path / "inventory.log").write_text("first\n")
    assert sizes == {"order": 8, "inventory": 0}
    assert census.log_lines_since(sizes) == 4


@pytest.fixture
def jaeger() -> Iterator[str]:
    """A stand-in for Jaeger's query API: two services, one trace found by both."""
    trace = {"traceID": "t1", "spans": [{"startTime": 10_000_000}, {"startTime": 20_000_000}]}
    late = {"traceID": "t2", "spans": [{"startTime": 15_000_000}, {"startTime": 99_000_000}]}
    answers = {
        "/api/services": ["order-service", "inventory-service", "some-test"],
        "order-service": [trace, late],
        "inventory-service": [trace],
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            service = dict(p.split("=") for p in query.split("&")).get("service") if query else ""
            data = answers[path] if path == "/api/services" else answers.get(service or "", [])
            body = json.dumps({"data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_spans_are_those_started_in_the_window_each_trace_once(jaeger: str) -> None:
    # t1 twice (two services found it): counted once; t2's span at 99 s is after the window.
    assert census.spans_between(jaeger, 5.0, 30.0) == 3
    assert census.spans_between("http://127.0.0.1:1", 5.0, 30.0) is None  # no Jaeger


def test_the_table_row_shows_the_counts_and_the_cpu_beside_the_step() -> None:
    counted = dataclasses.replace(
        step("outbox", 10, 100, 4),
        confirmed_ms={"p50": 40, "p99": 90},
        shipped_ms={"p50": 60, "p95": 80, "p99": 100},
        relay_ms={"p50": 10, "p99": 20},
        per_order={"statements": 77.0, "transactions": 8.4, "relay_batches": 3.0,
                   "fetches": 2.5, "spans": 30.5, "log_lines": None},
        machine=machine_cpu(7.0, 1.0, 20.0, 100, Baseline(0.1, 200.0, 0.1)),
    )  # fmt: skip
    cells = counts(counted).split()
    assert cells == ["77.0", "8.4", "3.0", "2.5", "30.5", "-", "60.0", "40.0", "0.300"]
    assert row(counted).endswith(counts(counted))


def test_env_items_become_the_services_settings_and_a_malformed_one_is_refused() -> None:
    assert settings(["CONSUMER_FETCH_MIN_BYTES=4096", "X=a=b"]) == {
        "CONSUMER_FETCH_MIN_BYTES": "4096",
        "X": "a=b",
    }
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        settings(["CONSUMER_FETCH_MIN_BYTES"])
