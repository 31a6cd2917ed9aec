"""A token bucket: the per-consumer rate limit (``CONSUMER_RATE_LIMIT_PER_SECOND``).

The consumer asks for at most as many records as there are tokens, and while the bucket is
empty it pauses its partitions instead of fetching and buffering: the backlog stays in Kafka,
memory stays flat, and the lag shows in ``consumer_lag``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens a second, up to ``capacity``; starts full. Pure but for the clock."""

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and room for one token")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def available(self) -> float:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def take(self, count: int) -> None:
        """Spend ``count`` tokens (the records just fetched)."""
        self._tokens = self.available() - count

    def wait_for(self, count: float = 1) -> float:
        """Seconds until ``count`` tokens are there."""
        return max(0.0, (count - self.available()) / self.rate)
