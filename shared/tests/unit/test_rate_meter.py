"""The per-key rate meter and the change-rate guard built on it, on a clock the tests move."""

from __future__ import annotations

import logging

import pytest

from shared.observability.correlation import correlated
from shared.observability.metrics import AGGREGATE_CHANGE_STORMS, AGGREGATE_CHANGES_REFUSED
from shared.writing.storm import ChangeRateGuard, KeyedRateMeter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_hit_is_counted_for_its_key_until_it_leaves_the_window() -> None:
    clock = Clock()
    meter = KeyedRateMeter(10.0, 100, clock=clock)
    assert [meter.hit("a").count for _ in range(3)] == [1, 2, 3]
    assert meter.count("b") == 0
    clock.now += 9.0
    assert meter.hit("a").count == 4
    clock.now += 1.0  # the first three are 10 s old: gone; the fourth is 1 s old
    assert meter.count("a") == 1
    clock.now += 10.0
    assert meter.count("a") == 0


def test_a_key_costs_the_same_memory_however_fast_it_is_hit() -> None:
    clock = Clock()
    meter = KeyedRateMeter(10.0, 100, slots=10, clock=clock)
    for _ in range(10_000):
        meter.hit("hot")
    window = meter._keys["hot"]
    assert len(window.counts) == 10
    assert meter.count("hot") == 10_000


def test_past_max_keys_the_key_hit_longest_ago_is_forgotten() -> None:
    meter = KeyedRateMeter(10.0, 3, clock=Clock())
    for key in ("a", "b", "c"):
        meter.hit(key)
    meter.hit("a")  # now b is the one hit longest ago
    meter.hit("d")
    assert len(meter) == 3
    assert [meter.count(k) for k in ("a", "b", "c", "d")] == [2, 0, 1, 1]


def test_the_threshold_is_crossed_once_per_storm_and_again_after_it_calmed_down() -> None:
    clock = Clock()
    meter = KeyedRateMeter(10.0, 100, threshold=4, clock=clock)
    crossings = [meter.hit("a").crossed for _ in range(20)]
    assert crossings == [False] * 4 + [True] + [False] * 15
    clock.now += 5.0
    assert not meter.hit("a").crossed  # still 21 in the window: the same storm
    clock.now += 5.0  # the burst left the window: 1 left, at most half the threshold
    assert [meter.hit("a").crossed for _ in range(4)] == [False, False, False, True]


def test_wait_for_tells_when_the_oldest_hits_have_left_the_window() -> None:
    clock = Clock(1000.0)
    meter = KeyedRateMeter(10.0, 100, clock=clock)
    meter.hit("a")
    clock.now += 3.0
    meter.hit("a")
    meter.hit("a")
    assert meter.wait_for("a", below=4) == 0.0
    assert meter.wait_for("a", below=3) == pytest.approx(7.0)  # the first leaves at 1010
    assert meter.wait_for("a", below=1) == pytest.approx(10.0)  # the last two at 1013
    assert meter.wait_for("unknown", below=1) == 0.0


def guard(
    clock: Clock, *, warn: float = 0.0, limit: float = 0.0, keys: int = 100
) -> ChangeRateGuard:
    return ChangeRateGuard(
        "meter-svc",
        "thing",
        "colour",
        window_seconds=10.0,
        warn_per_second=warn,
        limit_per_second=limit,
        max_aggregates=keys,
        clock=clock,
    )


def test_the_guard_refuses_past_the_limit_and_admits_again_after_the_wait_it_gave() -> None:
    clock = Clock(1000.0)
    limited = guard(clock, limit=0.3)  # 3 changes per 10 s
    before = AGGREGATE_CHANGES_REFUSED.labels("meter-svc", "thing", "colour")._value.get()
    assert [limited.admit("a") for _ in range(3)] == [None, None, None]
    clock.now += 2.5
    waits = [limited.admit("a") for _ in range(5)]  # hammering does not use up the allowance
    assert waits == [8] * 5
    assert limited.admit("b") is None
    clock.now += 8  # the first three left the window: three more may go
    assert [limited.admit("a") for _ in range(3)] == [None, None, None]
    assert limited.admit("a") == 10
    after = AGGREGATE_CHANGES_REFUSED.labels("meter-svc", "thing", "colour")._value.get()
    assert after == before + 6


def test_without_a_limit_the_guard_never_refuses() -> None:
    unlimited = guard(Clock(), warn=1.0)
    assert {unlimited.admit("a") for _ in range(1000)} == {None}


def test_the_guard_warns_once_per_storm_with_the_aggregate_and_correlation_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watching = guard(Clock(), warn=0.5)  # more than 5 in 10 s
    before = AGGREGATE_CHANGE_STORMS.labels("meter-svc", "thing", "colour")._value.get()
    with correlated("flow-42", "request:7"), caplog.at_level(logging.WARNING):
        for _ in range(50):
            watching.admit("t-1")
    (warning,) = [r for r in caplog.records if "storm guard" in r.getMessage()]
    message = warning.getMessage()
    assert "6 colour changes to thing t-1 in the last 10 s (more than 0.5 a second)" in message
    assert "thing_id=t-1 correlation_id=flow-42 causation_id=request:7" in message
    after = AGGREGATE_CHANGE_STORMS.labels("meter-svc", "thing", "colour")._value.get()
    assert after == before + 1


def test_a_limit_below_one_change_per_window_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one change"):
        guard(Clock(), limit=0.05)
