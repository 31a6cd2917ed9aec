"""What the Locust customers do, without Locust: orders, follow-ups, pacing, retries, journal.

``load/locustfile.py`` imports Locust, and importing Locust monkey-patches the standard
library with gevent; this module does not, so its choices are unit-tested like any code.
Every choice takes a ``random.Random``, seeded per user from the run's seed, so a run repeats
its orders, cancels and bursts as far as timing allows.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from load.runinfo import JournalEntry, Op

MAX_LINES = 5
HOT_LINE_SHARE = 0.4  # each line is a hot SKU with this chance: most orders touch one
CANCEL_SHARE = 0.15
CANCEL_WITHIN = 2.0  # seconds after placing: races reservation and dispatch
ADDRESS_SHARE = 0.10
ADDRESS_BURST = (3, 6)  # changes in one burst
ADDRESS_GAP = (0.05, 0.3)  # seconds between two changes of a burst
REPLAY_SHARE = 0.05  # accepted orders sent again with the same key and body
READ_SHARE = 0.30
READ_WITHIN = 5.0  # seconds after placing: the first read
READS = (1, 3)  # reads of one order, one after the other (the checker compares them)
READ_GAP = (0.2, 2.0)  # seconds between two reads of one order
RESTOCK_UNITS = (1, 6)  # units added to a hot SKU by one restock
RESTOCK_EVERY = (2.0, 5.0)  # seconds between two restocks
RESTOCK_QUIET_END = 10.0  # no restock starts in a headless run's last seconds
CITIES = (
    ("Springfield", "12345", "US"),
    ("Lyon", "69001", "FR"),
    ("Porto", "4000-123", "PT"),
    ("Leipzig", "04109", "DE"),
    ("Utrecht", "3511", "NL"),
)
STREETS = ("Main St", "Rue de la Paix", "Rua Nova", "Hauptstrasse", "Oudegracht")


def user_random(seed: int, index: int) -> random.Random:
    """The random source of one user: the run's seed plus the user's index (restocker 0)."""
    return random.Random(seed + index)


def customer_id(tag: str, n: int) -> str:
    return f"load-{tag}-{n}"


def correlation_id(tag: str) -> str:
    return f"load-{tag}-{uuid.uuid4()}"


def idempotency_key() -> str:
    # Not drawn from the seeded source: a rerun with the same seed must not find the
    # previous run's orders under the same keys.
    return str(uuid.uuid4())


def address(rng: random.Random) -> dict[str, str]:
    city, postal_code, country = rng.choice(CITIES)
    return {
        "line1": f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
        "city": city,
        "postal_code": postal_code,
        "country": country,
    }


def order_lines(rng: random.Random, hot: list[str], plenty: list[str]) -> list[dict[str, Any]]:
    """One to five lines, each SKU once; hot SKUs come up often and in small quantities."""
    wanted = rng.randint(1, MAX_LINES)
    chosen: list[str] = []
    for _ in range(wanted):
        pool = hot if hot and (not plenty or rng.random() < HOT_LINE_SHARE) else plenty
        free = [sku for sku in pool if sku not in chosen]
        if not free:
            free = [sku for sku in (*hot, *plenty) if sku not in chosen]
        if not free:
            break
        chosen.append(rng.choice(free))
    return [
        {"sku": sku, "quantity": rng.randint(1, 2) if sku in hot else rng.randint(1, 3)}
        for sku in chosen
    ]


def order_body(
    rng: random.Random, customer: str, hot: list[str], plenty: list[str]
) -> dict[str, Any]:
    """The body of ``POST /orders``."""
    return {
        "customer_id": customer,
        "items": order_lines(rng, hot, plenty),
        "shipping_address": address(rng),
    }


@dataclass(frozen=True)
class FollowUp:
    """What a customer does with an order once it is accepted (delays in seconds)."""

    replay: bool = False
    cancel_after: float | None = None
    address_burst: tuple[tuple[float, dict[str, str]], ...] = ()  # (pause before, address)
    reads: tuple[float, ...] = ()  # the pause before each read, the first from the placing

    @property
    def idle(self) -> bool:
        return (
            not self.replay
            and self.cancel_after is None
            and not self.address_burst
            and not self.reads
        )


def follow_up(rng: random.Random) -> FollowUp:
    """Draws every choice here, used or not, so the follow-ups (which run later, in their
    own greenlets) take nothing from the seeded source and one choice shifts no other."""
    replay = rng.random() < REPLAY_SHARE
    cancel = rng.random() < CANCEL_SHARE
    cancel_after = rng.uniform(0, CANCEL_WITHIN)
    burst = rng.random() < ADDRESS_SHARE
    size = rng.randint(*ADDRESS_BURST)
    changes = tuple((rng.uniform(*ADDRESS_GAP), address(rng)) for _ in range(size))
    read = rng.random() < READ_SHARE
    reads = (rng.uniform(0, READ_WITHIN), *(rng.uniform(*READ_GAP) for _ in range(READS[1] - 1)))
    count = rng.randint(*READS)
    return FollowUp(
        replay=replay,
        cancel_after=cancel_after if cancel else None,
        address_burst=changes if burst else (),
        reads=reads[:count] if read else (),
    )


def per_user_rate(rate: float, users: int, fixed: int = 1) -> float:
    """Orders/s each customer offers so that all of them offer ``rate``; ``fixed`` users
    (the restocker) place no orders."""
    customers = max(1, users - fixed)
    return rate / customers


def restocks_closed(now: float, started_at: float, duration: float, headless: bool) -> bool:
    """True in the last ``RESTOCK_QUIET_END`` seconds of a headless run (measured from the
    run's start, which precedes Locust's by the stocking up: on the early side). A restock
    cut off by the end of the load gets no answer, and a SKU with a restock never answered
    holds an unknown amount of stock put in: the checker could not judge it. With the web UI
    the user ends the run, and restocks go on."""
    return headless and now >= started_at + duration - RESTOCK_QUIET_END


def pacing_wait(rate: float, task_started: float, now: float) -> float:
    """Seconds to wait so one task starts every ``1 / rate`` s (0 when the task overran)."""
    if rate <= 0:
        return 1.0
    return max(0.0, 1.0 / rate - (now - task_started))


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a write with the same key and body while the service may be down (a kill and
    restart takes seconds): up to ``attempts`` tries within ``budget`` seconds."""

    attempts: int = 20
    budget: float = 60.0
    first_backoff: float = 0.25
    max_backoff: float = 4.0

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1, 2, ...)."""
        return min(self.max_backoff, self.first_backoff * 2.0 ** (attempt - 1))

    def again(self, status: int, attempt: int, elapsed: float) -> bool:
        """Whether to send attempt ``attempt + 1`` after this answer."""
        if not retryable(status):
            return False
        return attempt < self.attempts and elapsed + self.backoff(attempt) < self.budget


def retryable(status: int) -> bool:
    """No answer, a server error or overload (docs/api.md: retry with the same key)."""
    return status in {0, 429} or status >= 500


def expected(op: Op, status: int) -> bool:
    """An answer that is not a failure of the system under test: Locust counts the rest."""
    if 200 <= status < 300:
        return True
    # Too late to cancel or re-address (shipped, rejected, cancelled): the race is the point.
    return op in ("cancel", "address") and status == 409


def answer(text: str) -> dict[str, Any]:
    """The JSON object of an answer, or {} for anything else (an HTML error page, nothing)."""
    try:
        body = json.loads(text) if text else None
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def stock_total(body: dict[str, Any]) -> int | None:
    """available + reserved + shipped in an inventory answer: the stock put in so far."""
    try:
        return int(body["available"]) + int(body["reserved"]) + int(body["shipped"])
    except (KeyError, TypeError, ValueError):
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def journal_entry(
    op: Op,
    status: int,
    sent_at: float,
    seconds: float,
    text: str = "",
    *,
    key: str | None = None,
    order_id: str | None = None,
    sku: str | None = None,
    attempt: int = 1,
    sent: dict[str, Any] | None = None,
) -> JournalEntry:
    """One request and its answer. From the body ``sent``: a restock's quantity, an address
    change's address. From a 2xx answer: the order id (``order_id`` is the one asked about
    otherwise), the order's status and version, a restock's stock total."""
    body = answer(text) if 200 <= status < 300 else {}
    sent = sent or {}
    found = body.get("order_id")
    state = body.get("status") if op != "restock" else None
    return JournalEntry(
        t=sent_at,
        op=op,
        status=status,
        key=key,
        order_id=str(found) if found else order_id,
        sku=sku,
        total=stock_total(body) if op == "restock" else None,
        attempt=attempt,
        seconds=round(seconds, 4),
        quantity=_int(sent.get("quantity")) if op == "restock" else None,
        address={k: str(v) for k, v in sent.items()} if op == "address" else None,
        state=state if isinstance(state, str) else None,
        version=_int(body.get("version")) if op != "restock" else None,
    )
