"""The "what happened" section of the fault tests: each run's mode named from the pitfall
switches it set, its observation in its own words, grouped by pitfall, printed even when
every test passes, and a run that failed marked as such."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.faults.what_happened import (
    SECTION,
    Observation,
    mode_of,
    order_of,
    outcomes_of,
    render,
    tally,
)

REPO = Path(__file__).resolve().parents[2]


def test_a_run_without_pitfall_switches_is_protected() -> None:
    assert mode_of({}) == "protected"
    assert mode_of({"FAILPOINTS": "relay.after_publish", "PITFALL_NO_DEDUP": "false"}) == (
        "protected"
    )


def test_a_run_is_named_after_the_pitfall_modes_it_switched_on() -> None:
    env = {"PITFALL_NO_DEDUP": "true", "PITFALL_NO_SEQUENCE_CHECK": "TRUE", "FAILPOINTS": "x"}
    assert mode_of(env) == "no dedup + no sequence check"
    assert mode_of({"PITFALL_NAIVE_DUAL_WRITE": "true"}) == "naive dual write"


def test_a_tally_says_how_often_each_item_occurred() -> None:
    assert tally(["a", "b", "c"]) == "once each"
    assert tally(["a", "b", "a", "b"]) == "twice each"
    assert tally(["a", "b", "c", "a"]) == "1 twice, 2 once"
    assert tally([]) == "none"


def test_an_order_is_in_order_or_counts_what_came_after_a_later_one() -> None:
    assert order_of([1, 2, 3]) == "in order, 1..3"
    assert order_of([3, 1, 2, 4]) == "out of order (2 after a later one: 3, 1, 2, 4)"
    assert order_of([2, 1, 3], shown=2) == "out of order (1 after a later one: 2, 1, …)"


def test_runs_are_grouped_by_pitfall_with_their_modes_aligned_and_failures_marked() -> None:
    observations = [
        Observation("dual write: a writer killed", "protected", "1 event on Kafka", "t[p]"),
        Observation("dual write: a writer killed", "naive dual write", "0 events", "t[x]"),
        Observation("offsets: a consumer killed", "auto commit", "0 of 2 applied", "u[x]"),
    ]
    assert render(observations, {"t[p]": "passed", "t[x]": "passed", "u[x]": "failed"}) == [
        "dual write: a writer killed",
        "  protected:        1 event on Kafka",
        "  naive dual write: 0 events",
        "offsets: a consumer killed",
        "  auto commit: 0 of 2 applied  [FAILED]",
    ]


class FakeReport:
    def __init__(self, nodeid: str, when: str, outcome: str) -> None:
        self.nodeid, self.when, self.outcome = nodeid, when, outcome
        self.failed, self.skipped = outcome == "failed", outcome == "skipped"


def test_a_test_that_failed_in_any_phase_is_failed() -> None:
    reports = [
        FakeReport("a", "setup", "passed"),
        FakeReport("a", "call", "passed"),
        FakeReport("a", "teardown", "failed"),
        FakeReport("b", "call", "passed"),
        FakeReport("c", "setup", "skipped"),
    ]
    assert outcomes_of(reports) == {"a": "failed", "b": "passed", "c": "skipped"}


CONFTEST = """
import pytest

from tests.faults import what_happened


@pytest.fixture
def report(request):
    return what_happened.reporter(request)


def pytest_terminal_summary(terminalreporter, config):
    what_happened.summarize(terminalreporter, config)
"""

TESTS = """
import pytest


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
def test_a_fault(report, protected):
    env = {} if protected else {"PITFALL_NO_DEDUP": "true"}
    applied = ["e1"] if protected else ["e1", "e1"]
    report("duplicates: a redelivery", env, f"applied {len(applied)} times")
    assert len(applied) == (1 if protected else 2)


def test_a_fault_that_breaks(report):
    report("offsets: a crash", {}, "applied 0 times")
    assert False
"""


def test_the_section_is_printed_at_the_end_of_a_session_even_when_tests_pass(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_faults.py").write_text(TESTS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:locust"],
        check=False,  # one of its tests fails on purpose
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = run.stdout
    assert SECTION in out, out
    section = out[out.index(SECTION) :].splitlines()
    assert section[1:6] == [
        "duplicates: a redelivery",
        "  protected: applied 1 times",
        "  no dedup:  applied 2 times",
        "offsets: a crash",
        "  protected: applied 0 times  [FAILED]",
    ], out
