"""The load run's report from a synthetic run folder, whole and partial (unit tier)."""

from __future__ import annotations

import base64
from pathlib import Path

from load.report import Span, journal_counts, spans, write_report
from load.runinfo import (
    Check,
    JournalEntry,
    NemesisEntry,
    RunDir,
    RunInfo,
    Sample,
    Verdict,
)

T0 = 1_800_000_000.0
PNG = b"\x89PNG\r\n\x1a\n"
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)
STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,"
    "75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def info() -> RunInfo:
    return RunInfo(
        run_id="r1",
        tag="t1",
        seed=7,
        users=5,
        rate=10.0,
        duration=30.0,
        nemesis=True,
        actions=["kill", "latency"],
        pitfalls={"PITFALL_NAIVE_DUAL_WRITE": "1"},
        hot_skus=["Lt1-HOT-1"],
        skus=["Lt1-A", "Lt1-B"],
        start_offsets={"orders": {0: 3}},
        started_at=T0,
        ended_at=T0 + 30,
        drained_at=T0 + 42,
    )


def history_row(t: float, method: str, name: str, rps: float, p50: str, p95: str) -> str:
    percentiles = [p50, "1", "1", "1", "1", p95, "1", "1", "1", "1", "1"]
    totals = ["9", "1", "2", "2", "1", "9", "80"]
    return ",".join([str(int(t)), "5", method, name, str(rps), "0.5", *percentiles, *totals])


def full_run(path: Path) -> RunDir:
    run = RunDir(path)
    run.write_info(info())
    journal = [
        JournalEntry(T0 + 1, "order", 0, key="k1", attempt=1, seconds=10),
        JournalEntry(T0 + 12, "order", 202, key="k1", order_id="o1", attempt=2),
        JournalEntry(T0 + 13, "order", 202, key="k1", order_id="o1"),  # idempotent replay
        JournalEntry(T0 + 2, "order", 202, key="k2", order_id="o2"),
        JournalEntry(T0 + 3, "order", 422, key="k3"),
        JournalEntry(T0 + 4, "cancel", 409, order_id="o2"),
        JournalEntry(T0 + 5, "cancel", 202, order_id="o1"),
        JournalEntry(T0 + 6, "address", 202, order_id="o2"),
        JournalEntry(T0 + 7, "read", 200, order_id="o2"),
        JournalEntry(T0 + 8, "restock", 200, sku="Lt1-HOT-1", total=12),
    ]
    for entry in journal:
        run.append("journal.jsonl", entry)
    for action in (
        NemesisEntry(T0 + 5, "kill", "order", "start", "SIGKILL"),
        NemesisEntry(T0 + 9, "kill", "order", "end", "restarted"),
        NemesisEntry(T0 + 15, "latency", "kafka", "start", "300 ms"),
        NemesisEntry(T0 + 20, "poison", "orders", "error", "broker down"),
    ):
        run.append("nemesis.jsonl", action)
    for i in range(10):
        sample = Sample(
            t=T0 + 3 * i,
            lag={"order": i, "inventory": 2},
            outbox={"order": 1, "shipping": 0},
            statuses={"SHIPPED": i, "REJECTED": 1},
            up={"order": True},
        )
        run.append("timeline.jsonl", sample)
    rows = [HISTORY_HEADER]
    for i in range(30):
        rows.append(history_row(T0 + i, "POST", "/orders", 9.5, str(10 + i), str(40 + i)))
        rows.append(history_row(T0 + i, "", "Aggregated", 20.0, "5", "30"))
    run.file("locust_stats_history.csv").write_text("\n".join(rows) + "\n")
    stats = [
        STATS_HEADER,
        "POST,/orders,300,4,12,15.5,1,900,80,9.8,0.13" + ",1" * 11,
        ",Aggregated,600,4,8,10.2,1,900,80,19.6,0.13" + ",1" * 11,
    ]
    run.file("locust_stats.csv").write_text("\n".join(stats) + "\n")
    run.file("locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nPOST,/orders,\"CatchResponseError('503 down')\",4\n"
    )
    run.file("locust.html").write_text("<html></html>")
    run.write_verdict(
        Verdict(
            [
                Check("every accepted order is terminal", True, "3 orders, all terminal"),
                Check("one order per idempotency key", False, "1 key, 2 orders", ["k-dup"]),
            ]
        )
    )
    return run


def test_the_report_shows_the_verdict_actions_counts_and_an_embedded_plot(
    tmp_path: Path,
) -> None:
    run = full_run(tmp_path)
    page = write_report(run).read_text()
    assert (tmp_path / "report.html").is_file()
    assert "every accepted order is terminal" in page
    assert "one order per idempotency key" in page
    assert "k-dup" in page
    assert "FAILED: one order per idempotency key" in page
    for action in ("kill", "latency", "poison", "restarted", "broker down"):
        assert action in page
    assert "data:image/png;base64," in page
    embedded = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded).startswith(PNG)
    assert (tmp_path / "timeline.png").read_bytes().startswith(PNG)
    assert "href='locust.html'" in page
    assert "PITFALL_NAIVE_DUAL_WRITE=1" in page
    assert "12.0 s after the load stopped" in page  # drained
    assert "/orders" in page
    assert "503 down" in page


def test_a_run_that_failed_midway_still_gets_a_report(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.write_info(info())
    run.append("journal.jsonl", JournalEntry(T0 + 1, "order", 202, key="k", order_id="o"))
    with run.file("journal.jsonl").open("a") as journal:
        journal.write('{"t": 1800000002.0, "op": "ord')  # cut short by a crash
    run.file("locust_stats_history.csv").write_text(HISTORY_HEADER + "\n")
    page = write_report(run).read_text()
    assert "Verdict: not checked" in page
    assert "no nemesis actions" in page
    assert "no locust_stats.csv" in page
    assert "no locust.html" in page
    assert "orders accepted" in page
    assert "data:image/png;base64," in page


def test_an_empty_folder_gets_a_report_that_says_what_is_missing(tmp_path: Path) -> None:
    page = write_report(RunDir(tmp_path)).read_text()
    assert "no readable run.json" in page
    assert "no journal.jsonl" in page
    assert "Verdict: not checked" in page


def test_an_unreadable_verdict_is_reported_as_such(tmp_path: Path) -> None:
    run = full_run(tmp_path)
    run.file("verdict.json").write_text("{not json")
    assert "Verdict: unreadable" in write_report(run).read_text()


def test_the_journal_counts_orders_by_key_retries_and_replays(tmp_path: Path) -> None:
    counts = journal_counts(RunDir(full_run(tmp_path).path).journal())
    assert counts["orders sent (keys)"] == 3
    assert counts["orders accepted"] == 2
    assert counts["orders refused (4xx)"] == 1
    assert counts["order retries before accepted"] == 1
    assert counts["idempotent replays"] == 1
    assert counts["idempotent replays answering another order"] == 0
    assert counts["retries (all requests)"] == 1
    assert counts["cancel: 409"] == 1
    assert counts["cancel: accepted"] == 1
    assert counts["address change: accepted"] == 1
    assert counts["restocks answered"] == 1


def test_a_replay_answering_another_order_is_counted() -> None:
    counts = journal_counts(
        [
            JournalEntry(1.0, "order", 202, key="k", order_id="a"),
            JournalEntry(2.0, "order", 202, key="k", order_id="b"),
        ]
    )
    assert counts["idempotent replays answering another order"] == 1


def test_nemesis_starts_pair_with_their_ends_and_errors_and_unended_ones_stay_open() -> None:
    found = spans(
        [
            NemesisEntry(5.0, "kill", "order", "end", "restarted"),
            NemesisEntry(1.0, "kill", "order", "start", "SIGKILL"),
            NemesisEntry(6.0, "kill", "order", "start"),
            NemesisEntry(7.0, "kill", "order", "error", "no pid"),
            NemesisEntry(8.0, "pause", "inventory", "start"),
        ]
    )
    assert found == [
        Span("kill", "order", 1.0, 5.0, "SIGKILL / restarted"),
        Span("kill", "order", 6.0, 7.0, "no pid", error=True),
        Span("pause", "inventory", 8.0, None),
    ]
