"""The storm guard: how many integration events one incoming request or event caused.

Every unit-of-work flush is the work of one cause (an HTTP request, a consumed event, a
dispatcher tick); the integration events it wrote to the outbox are its fan-out, observed
in ``integration_events_per_cause``. Past ``STORM_FANOUT_WARN_THRESHOLD`` a warning names
the correlation id, so the flow that stormed can be found in the logs, traces and the
event-flow view. Debounced events are held, not written, so they do not count: a burst of
address edits is a fan-out of 0 per request, and the pitfall mode ``PITFALL_NO_DEBOUNCE``
shows 1 per request (1,000 requests, 1,000 events).

The fan-out cannot see the storm it is named after: 1,000 address edits are 1,000 requests
of one event (or none) each. So the guard also watches the *rate* at which one aggregate is
changed, where the changes are accepted: :class:`ChangeRateGuard` counts each aggregate's
change requests over a sliding window (:class:`KeyedRateMeter`, bounded memory), observes
the count in ``aggregate_changes_in_window``, warns once per storm past a rate (with the
correlation id and the aggregate id, counted in ``aggregate_change_storms_total``), and, when
a limit is set, refuses the changes past it with how long to wait (the HTTP edge answers 429
with ``Retry-After``). Its state is in memory, per process: two instances each count what
they receive.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from shared.observability.correlation import causation_id_var, correlation_id_var
from shared.observability.metrics import (
    AGGREGATE_CHANGE_STORMS,
    AGGREGATE_CHANGES_IN_WINDOW,
    AGGREGATE_CHANGES_REFUSED,
    EVENTS_PER_CAUSE,
    FANOUT_WARNINGS,
)

log = logging.getLogger(__name__)


def current_cause() -> str:
    """What the work in effect is answering, from its causation id: ``http`` (a request),
    ``timer`` (a scheduled job such as the dispatcher), ``event`` (a consumed event, whose
    id is the causation id) or ``background``."""
    causation = causation_id_var.get()
    if causation is None:
        return "background"
    if causation.startswith("request:"):
        return "http"
    if causation.startswith("dispatch:"):
        return "timer"
    return "event"


class FanOutGuard:
    """Observes each flush's fan-out; warns past ``threshold`` (0: never)."""

    def __init__(self, service: str, threshold: int) -> None:
        self._service = service
        self._threshold = threshold

    def observe(self, emitted: int) -> None:
        cause = current_cause()
        EVENTS_PER_CAUSE.labels(self._service, cause).observe(emitted)
        if self._threshold and emitted > self._threshold:
            FANOUT_WARNINGS.labels(self._service, cause).inc()
            log.warning(
                "storm guard: one %s caused %d integration events (threshold %d);"
                " correlation_id=%s causation_id=%s",
                cause,
                emitted,
                self._threshold,
                correlation_id_var.get(),
                causation_id_var.get(),
            )


@dataclass(frozen=True)
class Tally:
    """One hit's view of its key: ``count`` hits in the window, this one included;
    ``crossed``: this hit took the key past the meter's threshold, the first time since the
    key's count was last back at half the threshold or below (one report per storm, however
    long it lasts or however near the threshold it hovers)."""

    count: int
    crossed: bool


class _Window:
    """One key's hits, as counts per slot of a ring; ``newest`` is the absolute slot index
    the ring was last advanced to."""

    __slots__ = ("counts", "newest", "stormy", "total")

    def __init__(self, slots: int, now: int) -> None:
        self.counts = [0] * slots
        self.newest = now
        self.total = 0
        self.stormy = False

    def advance(self, now: int) -> None:
        slots = len(self.counts)
        if now - self.newest >= slots:
            self.counts = [0] * slots
            self.total = 0
        else:
            for slot in range(self.newest + 1, now + 1):
                self.total -= self.counts[slot % slots]
                self.counts[slot % slots] = 0
        self.newest = max(self.newest, now)


class KeyedRateMeter:
    """How many hits each key had in the last ``window`` seconds, for at most ``max_keys``
    keys.

    A key's window is a ring of ``slots`` counters of ``window / slots`` seconds each, so a
    key costs the same small memory however fast it is hit, and a hit leaves the window
    between ``window - window / slots`` and ``window`` seconds after it was made. Keys are
    kept least recently hit first; past ``max_keys`` the key hit longest ago is forgotten,
    and its count starts again from 0 if it comes back. Nothing is lost while fewer than
    ``max_keys`` keys are hit within one window. Past ``threshold`` hits in the window
    (``None``: no threshold) a hit reports the crossing, once per storm (:class:`Tally`).

    For one event loop: a :meth:`count` and the :meth:`hit` after it, with no ``await``
    between them, see no other hit in between. Pure but for the clock.
    """

    def __init__(
        self,
        window: float,
        max_keys: int,
        *,
        threshold: float | None = None,
        slots: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or max_keys < 1 or slots < 1:
            raise ValueError("a rate meter needs a positive window, one key and one slot")
        self.window = window
        self.max_keys = max_keys
        self.threshold = threshold
        self._slots = slots
        self._slot_seconds = window / slots
        self._clock = clock
        self._keys: OrderedDict[Hashable, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _now(self) -> tuple[float, int]:
        now = self._clock()
        return now, math.floor(now / self._slot_seconds)

    def count(self, key: Hashable) -> int:
        """Hits of ``key`` in the window now."""
        entry = self._keys.get(key)
        if entry is None:
            return 0
        entry.advance(self._now()[1])
        return entry.total

    def hit(self, key: Hashable) -> Tally:
        """Count one hit of ``key`` now."""
        slot = self._now()[1]
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Window(self._slots, slot)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
            entry.advance(slot)
        if self.threshold is not None and entry.total <= self.threshold / 2:
            entry.stormy = False
        entry.counts[slot % self._slots] += 1
        entry.total += 1
        crossed = self.threshold is not None and entry.total > self.threshold and not entry.stormy
        entry.stormy = entry.stormy or crossed
        return Tally(entry.total, crossed)

    def wait_for(self, key: Hashable, below: int) -> float:
        """Seconds until ``key`` has fewer than ``below`` hits in the window (0: now)."""
        now, slot = self._now()
        entry = self._keys.get(key)
        if entry is None:
            return 0.0
        entry.advance(slot)
        excess = entry.total - below + 1
        if excess <= 0:
            return 0.0
        # The oldest hits leave first: find the slot whose leaving drops enough of them.
        for oldest in range(slot - self._slots + 1, slot + 1):
            excess -= entry.counts[oldest % self._slots]
            if excess <= 0:
                return max(0.0, (oldest + self._slots) * self._slot_seconds - now)
        raise AssertionError("unreachable: the ring holds every hit of the window")


class ChangeRateGuard:
    """The storm guard where changes of one aggregate are accepted (an order's shipping
    address, at its HTTP route): how often each aggregate is changed, per instance.

    Each change request is counted over a sliding window of ``window_seconds`` and observed
    in ``aggregate_changes_in_window``. Past ``warn_per_second`` (averaged over the window;
    0: never) the first request of the storm logs a warning with the correlation id and the
    aggregate id and counts one in ``aggregate_change_storms_total``. With
    ``limit_per_second`` (0: no limit), at most ``limit_per_second * window_seconds`` changes
    of one aggregate are admitted per window; the rest are refused
    (``aggregate_changes_refused_total``) with the whole seconds to wait. A refused request
    does not use up the allowance, so a client that waits as told gets through. At most
    ``max_aggregates`` aggregates are remembered (see :class:`KeyedRateMeter`).
    """

    def __init__(
        self,
        service: str,
        aggregate_type: str,
        change: str,
        *,
        window_seconds: float,
        warn_per_second: float,
        limit_per_second: float,
        max_aggregates: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._labels = (service, aggregate_type, change)
        self._aggregate_type = aggregate_type
        self._change = change
        self.window_seconds = window_seconds
        self.warn_per_second = warn_per_second
        self.limit_per_second = limit_per_second
        # The float rounding of e.g. 0.3 * 10 must not cost a whole change.
        self.limit = math.floor(limit_per_second * window_seconds + 1e-9)
        if limit_per_second and self.limit < 1:
            raise ValueError("the limit must admit at least one change per window")
        threshold = warn_per_second * window_seconds if warn_per_second else None
        self._requested = KeyedRateMeter(
            window_seconds, max_aggregates, threshold=threshold, clock=clock
        )
        self._admitted = (
            KeyedRateMeter(window_seconds, max_aggregates, clock=clock)
            if limit_per_second
            else None
        )

    def admit(self, aggregate_id: str) -> int | None:
        """Count one change request of ``aggregate_id``. ``None``: go ahead and change it;
        a number: refused, past the limit; send it again after that many seconds."""
        tally = self._requested.hit(aggregate_id)
        AGGREGATE_CHANGES_IN_WINDOW.labels(*self._labels).observe(tally.count)
        if tally.crossed:
            AGGREGATE_CHANGE_STORMS.labels(*self._labels).inc()
            log.warning(
                "storm guard: %s %s changes to %s %s in the last %g s (more than %g a second);"
                " %s_id=%s correlation_id=%s causation_id=%s",
                tally.count,
                self._change,
                self._aggregate_type,
                aggregate_id,
                self.window_seconds,
                self.warn_per_second,
                self._aggregate_type,
                aggregate_id,
                correlation_id_var.get(),
                causation_id_var.get(),
            )
        if self._admitted is None:
            return None
        if self._admitted.count(aggregate_id) >= self.limit:
            AGGREGATE_CHANGES_REFUSED.labels(*self._labels).inc()
            return max(1, math.ceil(self._admitted.wait_for(aggregate_id, self.limit)))
        self._admitted.hit(aggregate_id)
        return None
