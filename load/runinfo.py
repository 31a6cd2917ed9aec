"""One load run's folder and the records every part of the load suite writes into it.

A run lives in ``reports/load/<run_id>/``. The parts never call each other; they meet here:

- ``run.json`` (:class:`RunInfo`): what was run, the run's SKUs and the Kafka end offsets
  when it started, so the checker reads only this run's records;
- ``journal.jsonl`` (:class:`JournalEntry`): every request the Locust customers (and the
  runner's stocking up) made and its answer: the checker's history of what was sent, what
  was acknowledged and what each answer showed;
- ``nemesis.jsonl`` (:class:`NemesisEntry`): every chaos action, with its moments;
- ``injected.jsonl`` (:class:`Injected`): the duplicates and poison records the nemesis
  published (the checker expects exactly the poison in the dead letters);
- ``timeline.jsonl`` (:class:`Sample`): consumer lag, outbox depth and order counts over time;
- ``locust_*.csv`` and ``locust.html``: Locust's own figures;
- ``verdict.json`` (:class:`Verdict`) and ``report.html``.

Everything the run creates is named after its ``tag`` (SKUs ``L<tag>-..``, customers
``load-<tag>-..``, correlation ids ``load-<tag>-..``, poison keys ``poison-<tag>-..``), so
a run can share the databases and topics with earlier runs and tests and still be checked
on its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

REPORTS = Path(__file__).resolve().parent.parent / "reports" / "load"

Op = Literal["order", "cancel", "address", "read", "restock"]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    tag: str  # a few characters that name everything the run creates
    seed: int
    users: int
    rate: float  # orders/s offered in all
    duration: float  # seconds of load
    nemesis: bool
    actions: list[str]  # the nemesis actions allowed (see load.nemesis.ACTIONS)
    pitfalls: dict[str, str]  # PITFALL_*/FAILPOINT* variables the services ran with
    hot_skus: list[str]  # few units, restocked now and then: some orders are rejected
    skus: list[str]  # plenty of units
    start_offsets: dict[str, dict[int, int]]  # topic -> partition -> end offset at the start
    started_at: float  # epoch seconds: load started
    ended_at: float | None = None  # epoch seconds: load stopped (Locust exited, before healing)
    healed_at: float | None = None  # epoch seconds: the nemesis's faults undone, services ready
    drained_at: float | None = None  # epoch seconds: every order of the run was terminal

    @property
    def all_skus(self) -> list[str]:
        return [*self.hot_skus, *self.skus]

    @property
    def customer_prefix(self) -> str:
        return f"load-{self.tag}-"

    @property
    def poison_prefix(self) -> str:
        return f"poison-{self.tag}-"


@dataclass(frozen=True)
class JournalEntry:
    """One HTTP write (or read) and what came back. ``status`` 0: no answer (timeout,
    connection reset); the same ``key`` may then be retried (``attempt`` 2, 3, ...).
    Sent at ``t``, answered at ``t + seconds`` (the same clock as the services' rows)."""

    t: float
    op: Op
    status: int
    key: str | None = None  # the Idempotency-Key sent
    order_id: str | None = None
    sku: str | None = None  # restock
    total: int | None = None  # restock: available + reserved + shipped in the answer
    attempt: int = 1
    seconds: float = 0.0  # how long the answer took
    quantity: int | None = None  # restock: the units sent to add
    address: dict[str, str] | None = None  # address change: the address sent
    state: str | None = None  # order, cancel, address, read: the order's status in the answer
    version: int | None = None  # cancel, address, read: the order's version in the answer

    @property
    def answered_at(self) -> float:
        return self.t + self.seconds


@dataclass(frozen=True)
class NemesisEntry:
    t: float
    action: str  # "kill", "restart", "pause", "scale", "latency", "reset", ...
    target: str  # a component, a proxy, a topic
    phase: Literal["start", "end", "error"]
    detail: str = ""


@dataclass(frozen=True)
class Injected:
    t: float
    kind: Literal["duplicate", "poison"]
    topic: str
    partition: int
    offset: int  # where the injected record landed
    key: str
    event_id: str | None = None  # a duplicate: the original's event id
    expect_letters: list[str] = field(default_factory=list)  # poison: services that dead-letter it


@dataclass(frozen=True)
class Sample:
    t: float
    lag: dict[str, float]  # service -> consumer lag (records)
    outbox: dict[str, float]  # service -> outbox rows waiting
    statuses: dict[str, int]  # order status -> orders of the run
    up: dict[str, bool]  # component -> answering


@dataclass(frozen=True)
class Check:
    """One invariant: holds or not, in a sentence, with the ids that break it (a sample)."""

    name: str
    ok: bool
    detail: str
    offending: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.ok]


class RunDir:
    """The folder of one run; append-only JSON lines, safe from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def new(cls, run_id: str, root: Path = REPORTS) -> Self:
        path = root / run_id
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def from_env(cls) -> Self:
        """The run folder the runner named in ``LOAD_RUN_DIR`` (for the Locust process)."""
        return cls(Path(os.environ["LOAD_RUN_DIR"]))

    def file(self, name: str) -> Path:
        return self.path / name

    def write_info(self, info: RunInfo) -> None:
        self.file("run.json").write_text(json.dumps(asdict(info), indent=2) + "\n")

    def info(self) -> RunInfo:
        raw = json.loads(self.file("run.json").read_text())
        raw["start_offsets"] = {
            topic: {int(p): o for p, o in parts.items()}
            for topic, parts in raw["start_offsets"].items()
        }
        return RunInfo(**raw)

    def append(self, name: str, record: Any) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock, self.file(name).open("a") as out:
            out.write(line)

    def read(self, name: str, kind: type[Any]) -> list[Any]:
        path = self.file(name)
        if not path.is_file():
            return []
        return [kind(**json.loads(line)) for line in path.read_text().splitlines() if line]

    def journal(self) -> list[JournalEntry]:
        return self.read("journal.jsonl", JournalEntry)

    def nemesis(self) -> list[NemesisEntry]:
        return self.read("nemesis.jsonl", NemesisEntry)

    def injected(self) -> list[Injected]:
        return self.read("injected.jsonl", Injected)

    def timeline(self) -> list[Sample]:
        return self.read("timeline.jsonl", Sample)

    def write_verdict(self, verdict: Verdict) -> None:
        self.file("verdict.json").write_text(json.dumps(asdict(verdict), indent=2) + "\n")

    def verdict(self) -> Verdict:
        raw = json.loads(self.file("verdict.json").read_text())
        return Verdict([Check(**check) for check in raw["checks"]])


def now() -> float:
    return time.time()
