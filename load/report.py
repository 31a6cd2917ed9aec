"""One load run's report: ``report.html`` (self-contained) and ``timeline.png`` in its folder.

Reads whatever the run left (a run that failed midway leaves some files out, or a last line
cut short) and says what is missing instead of failing: ``run.json``, ``journal.jsonl``,
``nemesis.jsonl``, ``timeline.jsonl``, Locust's ``locust_stats.csv``,
``locust_stats_history.csv`` and ``locust_failures.csv`` (``--csv <run>/locust
--csv-full-history``) and ``verdict.json``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from load.runinfo import JournalEntry, NemesisEntry, RunDir, RunInfo, Sample, Verdict

T = TypeVar("T")

# Locust's request names (its Type column holds the method): see load/locustfile.py.
ORDERS = ("POST", "/orders")
AGGREGATED = "Aggregated"
SUMMARY_COLUMNS = (
    ("Request Count", "requests"),
    ("Failure Count", "failures"),
    ("Median Response Time", "median ms"),
    ("95%", "p95 ms"),
    ("99%", "p99 ms"),
    ("Max Response Time", "max ms"),
    ("Requests/s", "req/s"),
    ("Failures/s", "fail/s"),
)


@dataclass(frozen=True)
class Span:
    """One nemesis action from its start to its end (``end`` None: it never ended)."""

    action: str
    target: str
    start: float
    end: float | None
    detail: str = ""
    error: bool = False


def write_report(run: RunDir) -> Path:
    """Write ``report.html`` and ``timeline.png`` into the run's folder; return the page."""
    info = _info(run)
    journal = _records(run.file("journal.jsonl"), JournalEntry)
    nemesis = _records(run.file("nemesis.jsonl"), NemesisEntry)
    samples = _records(run.file("timeline.jsonl"), Sample)
    history = _csv(run.file("locust_stats_history.csv"))
    stats = _csv(run.file("locust_stats.csv"))
    failures = _csv(run.file("locust_failures.csv"))
    actions = spans(nemesis)
    t0 = _start(info, journal, nemesis, samples, history)
    png = plot(t0, history, samples, actions)
    run.file("timeline.png").write_bytes(png)
    page = "\n".join(
        [
            _head(info, run),
            _parameters(info, run),
            _verdict(run),
            "<h2>Over time</h2>",
            f'<img alt="timeline" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
            _journal(journal, samples),
            _nemesis(actions, t0),
            _locust(stats, failures, run),
            "</body></html>",
        ]
    )
    path = run.file("report.html")
    path.write_text(page)
    return path


# -- reading ----------------------------------------------------------------------------------


def _info(run: RunDir) -> RunInfo | None:
    try:
        return run.info()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _records(path: Path, kind: type[T]) -> list[T]:
    """The JSON lines of ``path`` as ``kind``; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    records: list[T] = []
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            records.append(kind(**{k: v for k, v in raw.items() if k in names}))
        except (ValueError, TypeError, AttributeError):
            continue
    return records


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as source:
        return list(csv.DictReader(source))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def _start(
    info: RunInfo | None,
    journal: list[JournalEntry],
    nemesis: list[NemesisEntry],
    samples: list[Sample],
    history: list[dict[str, str]],
) -> float:
    """Time zero of the plots: the load's start, else the earliest moment on record."""
    if info is not None and info.started_at:
        return info.started_at
    moments = [e.t for e in journal] + [e.t for e in nemesis] + [s.t for s in samples]
    moments += [v for row in history if (v := _number(row.get("Timestamp"))) is not None]
    return min(moments, default=0.0)


# -- figures ----------------------------------------------------------------------------------


def spans(entries: Iterable[NemesisEntry]) -> list[Span]:
    """Pair each action's start with the next end (or error) of the same action and target."""
    open_: dict[tuple[str, str], list[NemesisEntry]] = defaultdict(list)
    done: list[Span] = []
    for entry in sorted(entries, key=lambda e: e.t):
        key = (entry.action, entry.target)
        if entry.phase == "start":
            open_[key].append(entry)
            continue
        started = open_[key].pop(0) if open_[key] else None
        details = [d for d in (started.detail if started else "", entry.detail) if d]
        done.append(
            Span(
                entry.action,
                entry.target,
                started.t if started else entry.t,
                entry.t,
                " / ".join(dict.fromkeys(details)),
                error=entry.phase == "error",
            )
        )
    done += [
        Span(e.action, e.target, e.t, None, e.detail) for waiting in open_.values() for e in waiting
    ]
    return sorted(done, key=lambda s: s.start)


def _series(
    history: list[dict[str, str]], t0: float, method: str, name: str, column: str
) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for row in history:
        if row.get("Name") != name or (row.get("Type") or "") != method:
            continue
        t, value = _number(row.get("Timestamp")), _number(row.get(column))
        if t is not None and value is not None:
            xs.append(t - t0)
            ys.append(value)
    return xs, ys


def plot(
    t0: float, history: list[dict[str, str]], samples: list[Sample], actions: list[Span]
) -> bytes:
    """The run on one figure (PNG): throughput, POST /orders latency, consumer lag, outbox
    depth and the run's orders by status, each with the nemesis actions as labelled spans."""
    import matplotlib  # noqa: PLC0415 - heavy, and only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(5, 1, figsize=(12, 15), sharex=True)
    throughput, latency, lag, outbox, statuses = axes
    for column, label in (("Requests/s", "requests/s"), ("Failures/s", "failures/s")):
        throughput.plot(*_series(history, t0, "", AGGREGATED, column), label=label)
    for column in ("50%", "95%"):
        latency.plot(*_series(history, t0, *ORDERS, column), label=f"POST /orders p{column[:-1]}")
    times = [s.t - t0 for s in samples]
    for axis, field in ((lag, "lag"), (outbox, "outbox")):
        per_sample: list[dict[str, float]] = [getattr(s, field) for s in samples]
        for name in sorted({k for values in per_sample for k in values}):
            axis.plot(times, [v.get(name, float("nan")) for v in per_sample], label=name)
    for status in sorted({k for s in samples for k in s.statuses}):
        statuses.plot(times, [s.statuses.get(status, 0) for s in samples], label=status)
    titles = (
        (throughput, "throughput (all requests)", "per second"),
        (latency, "POST /orders latency (Locust, 10 s window)", "ms"),
        (lag, "consumer lag per service", "records"),
        (outbox, "outbox depth per service", "rows"),
        (statuses, "the run's orders by status", "orders"),
    )
    stamps = [v for r in history if (v := _number(r.get("Timestamp"))) is not None]
    last = max([*(s.t for s in samples), *stamps], default=None)  # an unended action ends here
    for axis, title, unit in titles:
        axis.set(title=title, ylabel=unit)
        axis.grid(alpha=0.3)
        _mark(axis, actions, t0, last)
        if axis.lines:
            axis.legend(fontsize=7, loc="upper left")
        else:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", color="grey")
    statuses.set_xlabel("seconds since the load started")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def _mark(axis: Any, actions: list[Span], t0: float, last: float | None) -> None:
    palette = ["tab:red", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]
    colours: dict[str, str] = {}
    for span in actions:
        colour = colours.setdefault(span.action, palette[len(colours) % len(palette)])
        start = span.start - t0
        stop = (span.end if span.end is not None else max(last or 0.0, span.start)) - t0
        if stop - start < 0.5:  # an instant action: a line, not an invisible span
            axis.axvline(start, color=colour, alpha=0.6, linewidth=1)
        else:
            axis.axvspan(start, stop, color=colour, alpha=0.15)
        axis.text(
            start,
            0.98,
            f"{span.action} {span.target}" + (" (error)" if span.error else ""),
            transform=axis.get_xaxis_transform(),
            rotation=90,
            va="top",
            fontsize=6,
            color=colour,
        )


# -- counts -----------------------------------------------------------------------------------


def journal_counts(entries: Sequence[JournalEntry]) -> dict[str, int]:
    """What the customers did, from the journal: orders by key, retries, idempotent replays
    (the same key sent again after it was accepted), cancels, address changes, restocks."""
    counts: Counter[str] = Counter()
    by_key: dict[str, list[JournalEntry]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: e.t):
        ok = 200 <= entry.status < 300
        if entry.attempt > 1:
            counts["retries (all requests)"] += 1
        if entry.op == "order" and entry.key is not None:
            by_key[entry.key].append(entry)
        elif entry.op in ("cancel", "address"):
            label = "cancel" if entry.op == "cancel" else "address change"
            counts[f"{label}: {_answer(entry.status)}"] += 1
        elif entry.op == "read":
            counts["reads answered" if ok else "reads failed"] += 1
        elif entry.op == "restock":
            counts["restocks answered" if ok else "restocks unanswered"] += 1
    for sends in by_key.values():
        counts["orders sent (keys)"] += 1
        accepted = [e for e in sends if 200 <= e.status < 300]
        if accepted:
            counts["orders accepted"] += 1
            first = sends.index(accepted[0])
            counts["order retries before accepted"] += first
            replays = sends[first + 1 :]
            counts["idempotent replays"] += len(replays)
            counts["idempotent replays answering another order"] += sum(
                1 for e in replays if 200 <= e.status < 300 and e.order_id != accepted[0].order_id
            )
        elif 400 <= sends[-1].status < 500:
            counts["orders refused (4xx)"] += 1
        else:
            counts["orders never accepted (no answer or 5xx)"] += 1
    return dict(counts)


def _answer(status: int) -> str:
    if status == 0:
        return "no answer"
    if 200 <= status < 300:
        return "accepted"
    return str(status)


# -- the page ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _head(info: RunInfo | None, run: RunDir) -> str:
    title = f"Load run {info.run_id if info else run.path.name}"
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}"
        "th{background:#f3f3f3}.pass{color:#070}.fail{color:#b00;font-weight:bold}"
        "img{max-width:100%}.missing{color:#888}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{style}</style></head><body><h1>{_e(title)}</h1>"
    )


def _parameters(info: RunInfo | None, run: RunDir) -> str:
    if info is None:
        return f"<p class='missing'>no readable run.json in {_e(run.path)}</p>"
    drained = (
        f"{info.drained_at - info.ended_at:.1f} s after the load stopped"
        if info.drained_at and info.ended_at
        else "not drained"
    )
    rows = [
        ("run", info.run_id),
        ("tag", info.tag),
        ("seed", info.seed),
        ("users", info.users),
        ("rate (orders/s offered)", info.rate),
        ("duration (s)", info.duration),
        ("nemesis", ", ".join(info.actions) if info.nemesis else "off"),
        ("pitfalls", ", ".join(f"{k}={v}" for k, v in info.pitfalls.items()) or "none"),
        ("hot SKUs", ", ".join(info.hot_skus)),
        ("SKUs with plenty", len(info.skus)),
        ("load started", _when(info.started_at)),
        ("load stopped", _when(info.ended_at)),
        ("every order terminal", drained),
    ]
    return "<h2>Parameters</h2>" + _table(("parameter", "value"), rows)


def _verdict(run: RunDir) -> str:
    if not run.file("verdict.json").is_file():
        return "<h2>Verdict: not checked</h2><p class='missing'>no verdict.json</p>"
    try:
        verdict: Verdict = run.verdict()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"<h2>Verdict: unreadable</h2><p class='fail'>{_e(exc)}</p>"
    summary = "every invariant holds" if verdict.ok else f"FAILED: {', '.join(verdict.failed())}"
    rows = "".join(
        f"<tr><td>{_e(c.name)}</td>"
        f"<td class='{'pass' if c.ok else 'fail'}'>{'pass' if c.ok else 'FAIL'}</td>"
        f"<td>{_e(c.detail)}</td><td>{_e(', '.join(c.offending))}</td></tr>"
        for c in verdict.checks
    )
    return (
        f"<h2>Verdict: <span class='{'pass' if verdict.ok else 'fail'}'>{_e(summary)}</span></h2>"
        "<table><tr><th>invariant</th><th>result</th><th>detail</th><th>offending ids</th></tr>"
        f"{rows}</table>"
    )


def _journal(journal: list[JournalEntry], samples: list[Sample]) -> str:
    if not journal:
        part = "<h2>Journal</h2><p class='missing'>no journal.jsonl</p>"
    else:
        counts = journal_counts(journal)
        part = "<h2>Journal</h2>" + _table(("what", "count"), sorted(counts.items()))
    if samples:
        last = samples[-1].statuses
        part += "<h3>The run's orders by status (last sample)</h3>" + _table(
            ("status", "orders"), sorted(last.items())
        )
    return part


def _nemesis(actions: list[Span], t0: float) -> str:
    if not actions:
        return "<h2>Nemesis</h2><p class='missing'>no nemesis actions</p>"
    rows = [
        (
            f"{a.start - t0:.1f}",
            "-" if a.end is None else f"{a.end - a.start:.1f}",
            a.action,
            a.target,
            ("ERROR " if a.error else "") + a.detail,
        )
        for a in actions
    ]
    return "<h2>Nemesis</h2>" + _table(("at s", "lasted s", "action", "target", "detail"), rows)


def _locust(stats: list[dict[str, str]], failures: list[dict[str, str]], run: RunDir) -> str:
    link = (
        "<p><a href='locust.html'>Locust's own report</a></p>"
        if run.file("locust.html").is_file()
        else "<p class='missing'>no locust.html</p>"
    )
    if not stats:
        return f"<h2>Locust</h2><p class='missing'>no locust_stats.csv</p>{link}"
    rows = [
        (
            r.get("Type", ""),
            r.get("Name", ""),
            *(_figure(r.get(column)) for column, _ in SUMMARY_COLUMNS),
        )
        for r in stats
    ]
    part = "<h2>Locust</h2>" + link
    part += _table(("type", "name", *(label for _, label in SUMMARY_COLUMNS)), rows)
    if failures:
        part += "<h3>Failures</h3>" + _table(
            ("type", "name", "error", "occurrences"),
            (
                (f.get("Method", ""), f.get("Name", ""), f.get("Error", ""), f.get("Occurrences"))
                for f in failures
            ),
        )
    return part


def _figure(text: str | None) -> str:
    value = _number(text)
    if value is None:
        return text or "-"
    return f"{value:.0f}" if abs(value) >= 10 or value.is_integer() else f"{value:.2f}"
