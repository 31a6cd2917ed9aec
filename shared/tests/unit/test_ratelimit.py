"""The token bucket of the consumer rate limit, on a clock the test moves."""

from __future__ import annotations

import pytest

from shared.consuming.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    assert bucket.available() == 10
    bucket.take(10)
    assert bucket.available() == 0
    assert bucket.wait_for(1) == pytest.approx(0.1)
    clock.now = 0.5
    assert bucket.available() == pytest.approx(5)


def test_the_bucket_never_holds_more_than_its_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=10, clock=clock)
    clock.now = 100.0
    assert bucket.available() == 10


def test_over_a_long_run_the_bucket_admits_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=50, capacity=50, clock=clock)
    admitted = 0
    while clock.now < 10.0:
        tokens = int(bucket.available())
        bucket.take(tokens)
        admitted += tokens
        clock.now += 0.05
    assert 500 <= admitted <= 550  # the rate, plus the first full bucket


def test_a_bucket_without_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0, capacity=1)
