"""The benchmark's own arithmetic and its HTTP client, without the suite (unit tier)."""

from __future__ import annotations

import asyncio
import random
from uuid import uuid4

import pytest

from load.bench.httpclient import Client, HttpError
from load.bench.load import Sent, schedule
from load.bench.probe import Histogram, percentile
from load.bench.report import highest_sustained, summary
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
