"""What each fault test saw happen, printed at the end of the session.

A fault test shows a pitfall by asserting on what it observed, and pytest then says only
``PASSED``, for the protected run and the pitfall run alike. So each test also hands what it
observed to the ``report`` fixture (before it asserts, so a failing test reports too), and
the session ends with a section of one line per run, grouped by pitfall::

    ==================== what happened ====================
    dual write: a writer killed right after its business commit
      protected:        1 change committed with 1 outbox row; 1 event on Kafka after the relay ran
      naive dual write: 1 change committed with 0 outbox rows; 0 events on Kafka within 3 s

The mode is named from the ``PITFALL_*`` switches the test set (``protected`` when none),
and the text is the test's own, built from what it read: counts, states, orders. A line of
a test that did not pass says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest

SECTION = "what happened"


@dataclass(frozen=True)
class Observation:
    pitfall: str  # the group: the pitfall and the fault that provokes it
    mode: str  # "protected", or the pitfall modes that were on, in words
    happened: str  # what the test observed
    nodeid: str


def mode_of(env: Mapping[str, str]) -> str:
    """``{"PITFALL_NO_DEDUP": "true", "PITFALL_AUTO_COMMIT": "true"}`` → ``no dedup + auto
    commit``; ``protected`` when no pitfall mode is on."""
    modes = [
        name.removeprefix("PITFALL_").lower().replace("_", " ")
        for name, value in env.items()
        if name.startswith("PITFALL_") and value.strip().lower() == "true"
    ]
    return " + ".join(modes) or "protected"


def times(n: int) -> str:
    return {0: "never", 1: "once", 2: "twice"}.get(n, f"{n} times")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def tally(items: Iterable[Hashable]) -> str:
    """How often each distinct item occurs: ``once each``, or ``1 twice, 2 once``."""
    occurrences = Counter(Counter(items).values())  # how often -> how many items
    if not occurrences:
        return "none"
    if len(occurrences) == 1:
        return f"{times(next(iter(occurrences)))} each"
    return ", ".join(f"{n} {times(c)}" for c, n in sorted(occurrences.items(), reverse=True))


def order_of(sequences: Sequence[int], shown: int = 8) -> str:
    """``in order, 1..5``, or ``out of order (2 after a later one: 3, 1, 2, 4, 5)``."""
    if not sequences:
        return "none"
    if list(sequences) == sorted(sequences):
        return f"in order, {sequences[0]}..{sequences[-1]}"
    late, highest = 0, sequences[0]
    for sequence in sequences[1:]:
        late += sequence < highest
        highest = max(highest, sequence)
    head = ", ".join(str(s) for s in sequences[:shown])
    more = ", …" if len(sequences) > shown else ""
    return f"out of order ({late} after a later one: {head}{more})"


def render(observations: Sequence[Observation], outcomes: Mapping[str, str]) -> list[str]:
    """The section's lines: each pitfall, then one line per run, its mode aligned; a run
    whose test did not pass carries its outcome."""
    groups: dict[str, list[Observation]] = {}
    for observation in observations:
        groups.setdefault(observation.pitfall, []).append(observation)
    lines: list[str] = []
    for pitfall, runs in groups.items():
        lines.append(pitfall)
        width = max(len(run.mode) for run in runs) + 1
        for run in runs:
            outcome = outcomes.get(run.nodeid, "passed")
            flag = "" if outcome == "passed" else f"  [{outcome.upper()}]"
            lines.append(f"  {run.mode + ':':<{width}} {run.happened}{flag}")
    return lines


def outcomes_of(reports: Iterable[object]) -> dict[str, str]:
    """Each test's outcome from pytest's reports: ``failed`` if any phase failed, else the
    outcome of its call (``passed``, ``skipped``)."""
    outcomes: dict[str, str] = {}
    for report in reports:
        nodeid, when = getattr(report, "nodeid", None), getattr(report, "when", None)
        if nodeid is None or when is None:
            continue
        if getattr(report, "failed", False):
            outcomes[nodeid] = "failed"
        elif when == "call" or (when == "setup" and getattr(report, "skipped", False)):
            outcomes.setdefault(nodeid, str(getattr(report, "outcome", "passed")))
    return outcomes


OBSERVATIONS = pytest.StashKey[list[Observation]]()


class Report:
    """``report(pitfall, env, happened)``: what this test observed, with ``env`` the
    environment it gave its workers (the ``PITFALL_*`` switches in it name the mode)."""

    def __init__(self, observations: list[Observation], nodeid: str) -> None:
        self._observations = observations
        self._nodeid = nodeid

    def __call__(self, pitfall: str, env: Mapping[str, str], happened: str) -> None:
        self._observations.append(Observation(pitfall, mode_of(env), happened, self._nodeid))


def reporter(request: pytest.FixtureRequest) -> Report:
    return Report(request.config.stash.setdefault(OBSERVATIONS, []), request.node.nodeid)


def summarize(terminal: pytest.TerminalReporter, config: pytest.Config) -> None:
    observations = config.stash.get(OBSERVATIONS, [])
    if not observations:
        return
    reports = [r for category in terminal.stats.values() for r in category]
    terminal.section(SECTION)
    for line in render(observations, outcomes_of(reports)):
        terminal.line(line)
