"""The load suite's customers and restocker, for Locust (``FastHttpUser``).

Run by the runner as ``locust -f load/locustfile.py --headless --users U ...`` with
``LOAD_RUN_DIR`` naming a run folder that holds ``run.json`` (:class:`load.runinfo.RunInfo`);
without ``--headless`` Locust's web UI drives the same users. ``--host`` is the order
service (default: its port from ``infra.settings.ports()``); the restocker talks to the
inventory service by absolute URL.

- ``Customer`` (U - 1 of them): places orders of one to five lines over the run's SKUs, the
  hot ones often, so that all customers together offer ``rate`` orders/s; retries a write
  that got no answer or a 5xx with the same ``Idempotency-Key`` and body for up to a minute;
  replays a few accepted orders on purpose (same key, must be the same order); cancels some
  at a random moment, re-addresses some in bursts, reads some (one to three times).
- ``Restocker`` (exactly one): adds a few units to a hot SKU every few seconds
  (``POST /inventory/{sku}/restock`` with an ``Idempotency-Key``, so a retry adds once),
  retrying until answered, so the checker knows every unit put in.

Every request is one line of ``journal.jsonl`` (:class:`load.runinfo.JournalEntry`). The
choices live in :mod:`load.customers`, which imports no Locust (and so no gevent patching).
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Locust puts only this file's folder on sys.path; the repository root holds load/ and infra/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from gevent.pool import Group
from locust import FastHttpUser, events, task
from locust.env import Environment

from infra.settings import HOST, ports
from load.customers import (
    RESTOCK_EVERY,
    RESTOCK_UNITS,
    FollowUp,
    RetryPolicy,
    answer,
    correlation_id,
    customer_id,
    expected,
    follow_up,
    idempotency_key,
    journal_entry,
    order_body,
    pacing_wait,
    per_user_rate,
    restocks_closed,
    user_random,
)
from load.runinfo import Op, RunDir, RunInfo

TIMEOUT = 10.0  # seconds: connect and answer
RETRY = RetryPolicy()
UNTIL_ANSWERED = RetryPolicy(attempts=10_000, budget=3600.0, max_backoff=2.0)
NO_RETRY = RetryPolicy(attempts=1)
FIXED_USERS = 1  # the restocker


@functools.cache
def run() -> tuple[RunDir, RunInfo]:
    try:
        folder = RunDir.from_env()
        return folder, folder.info()
    except (KeyError, OSError) as exc:
        raise SystemExit(
            f"load/locustfile.py needs LOAD_RUN_DIR naming a run folder with run.json ({exc!r});"
            " `python -m load` prepares one"
        ) from exc


def check_the_run_folder(environment: Environment, **_: Any) -> None:
    run()  # fail at start, not in every user


events.init.add_listener(check_the_run_folder)  # type: ignore[no-untyped-call]


class Writer(FastHttpUser):
    """A user that journals every request and retries writes with the same body."""

    abstract = True
    host = f"http://{HOST}:{ports().order}"
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.folder, self.info = run()
        self.jitter = random.Random()  # backoff jitter: kept out of the seeded choices

    def send(
        self,
        op: Op,
        method: str,
        url: str,
        name: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        order_id: str | None = None,
        sku: str | None = None,
        attempt: int = 1,
        same_order: str | None = None,
    ) -> tuple[int, str]:
        """One request: Locust's statistics under ``name`` and one journal line, also when
        the user is stopped mid-request (then status 0: no answer)."""
        sent_at, started = time.time(), time.perf_counter()
        status, text = 0, ""
        try:
            with self.client.request(
                method, url, name=name, json=body, headers=headers, catch_response=True
            ) as response:
                status = int(response.status_code or 0)
                text = response.text or ""
                found = answer(text).get("order_id")
                if same_order is not None and 200 <= status < 300 and found != same_order:
                    response.failure(f"idempotent replay answered order {found}, not {same_order}")
                elif expected(op, status):
                    response.success()
                else:
                    reason = text[:200] if status else repr(response.error)
                    response.failure(f"{status} {reason}")
        finally:
            seconds = time.perf_counter() - started
            self.folder.append(
                "journal.jsonl",
                journal_entry(
                    op,
                    status,
                    sent_at,
                    seconds,
                    text,
                    key=key,
                    order_id=order_id,
                    sku=sku,
                    attempt=attempt,
                    sent=body,
                ),
            )
        return status, text

    def write(
        self,
        op: Op,
        method: str,
        url: str,
        name: str,
        retry: RetryPolicy = RETRY,
        **kwargs: Any,
    ) -> tuple[int, str]:
        """Send until answered (or the policy gives up), the same body every time."""
        started = time.monotonic()
        attempt = 1
        while True:
            status, text = self.send(op, method, url, name, attempt=attempt, **kwargs)
            if not retry.again(status, attempt, time.monotonic() - started):
                return status, text
            gevent.sleep(retry.backoff(attempt) * self.jitter.uniform(0.75, 1.25))
            attempt += 1


class Customer(Writer):
    """Places orders at its share of the run's rate and follows some of them up."""

    count = 0  # customers created in this process: each one's number

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        Customer.count += 1
        self.number = Customer.count
        self.rng = user_random(self.info.seed, self.number)
        self.customer = customer_id(self.info.tag, self.number)
        self.followups = Group()
        self.task_started = time.monotonic()

    def rate(self) -> float:
        runner = self.environment.runner
        users = runner.target_user_count if runner and runner.target_user_count else 0
        return per_user_rate(self.info.rate, users or self.info.users, FIXED_USERS)

    def wait_time(self) -> float:
        return pacing_wait(self.rate(), self.task_started, time.monotonic())

    def on_start(self) -> None:
        # Customers spawn together; a random phase spreads their orders over the interval.
        gevent.sleep(self.rng.uniform(0, 1 / max(self.rate(), 0.01)))

    def on_stop(self) -> None:
        try:
            self.followups.join(timeout=self.environment.stop_timeout or 0)
        finally:
            self.followups.kill(block=True)  # in-flight requests are journaled with status 0

    @task
    def place_order(self) -> None:
        self.task_started = time.monotonic()
        body = order_body(self.rng, self.customer, self.info.hot_skus, self.info.skus)
        plan = follow_up(self.rng)
        key = idempotency_key()
        headers = {"Idempotency-Key": key, "X-Correlation-ID": correlation_id(self.info.tag)}
        status, text = self.write(
            "order", "POST", "/orders", "/orders", body=body, headers=headers, key=key
        )
        order_id = answer(text).get("order_id") if 200 <= status < 300 else None
        if isinstance(order_id, str) and not plan.idle:
            self.follow(order_id, key, body, headers, plan)

    def follow(
        self,
        order_id: str,
        key: str,
        body: dict[str, Any],
        headers: dict[str, str],
        plan: FollowUp,
    ) -> None:
        """Each follow-up in its own greenlet, so they race each other and the next order."""
        if plan.replay:
            self.followups.spawn(
                self.write,
                "order",
                "POST",
                "/orders",
                "/orders (replay)",
                body=body,
                headers=headers,
                key=key,
                same_order=order_id,
            )
        if plan.cancel_after is not None:
            self.followups.spawn(self.after, plan.cancel_after, self.cancel, order_id)
        if plan.address_burst:
            self.followups.spawn(self.readdress, order_id, plan.address_burst)
        if plan.reads:
            self.followups.spawn(self.read, order_id, plan.reads)

    @staticmethod
    def after(delay: float, step: Callable[[str], None], order_id: str) -> None:
        gevent.sleep(delay)
        step(order_id)

    def cancel(self, order_id: str) -> None:
        self.write(
            "cancel",
            "POST",
            f"/orders/{order_id}/cancel",
            "/orders/{id}/cancel",
            order_id=order_id,
            headers=self.correlated(),
        )

    def readdress(self, order_id: str, changes: tuple[tuple[float, dict[str, str]], ...]) -> None:
        for pause, new_address in changes:
            gevent.sleep(pause)
            status, _ = self.write(
                "address",
                "PUT",
                f"/orders/{order_id}/shipping-address",
                "/orders/{id}/shipping-address",
                body=new_address,
                order_id=order_id,
                headers=self.correlated(),
            )
            if status == 409:  # the order ended: the rest of the burst would be refused too
                return

    def read(self, order_id: str, pauses: tuple[float, ...]) -> None:
        for pause in pauses:
            gevent.sleep(pause)
            self.write(
                "read",
                "GET",
                f"/orders/{order_id}",
                "/orders/{id}",
                NO_RETRY,
                order_id=order_id,
                headers=self.correlated(),
            )

    def correlated(self) -> dict[str, str]:
        return {"X-Correlation-ID": correlation_id(self.info.tag)}


class Restocker(Writer):
    """Adds a few units to the hot SKUs in turn, every few seconds."""

    fixed_count = FIXED_USERS

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.rng = user_random(self.info.seed, 0)
        self.turn = 0
        self.inventory = f"http://{HOST}:{ports().inventory}"

    def wait_time(self) -> float:
        return self.rng.uniform(*RESTOCK_EVERY)

    @task
    def restock(self) -> None:
        options = self.environment.parsed_options
        headless = bool(options is not None and options.headless)
        if not self.info.hot_skus or restocks_closed(
            time.time(), self.info.started_at, self.info.duration, headless
        ):
            return
        sku = self.info.hot_skus[self.turn % len(self.info.hot_skus)]
        self.turn += 1
        key = idempotency_key()
        self.write(
            "restock",
            "POST",
            f"{self.inventory}/inventory/{sku}/restock",
            "/inventory/{sku}/restock",
            UNTIL_ANSWERED,
            body={"quantity": self.rng.randint(*RESTOCK_UNITS)},
            headers={"Idempotency-Key": key, "X-Correlation-ID": correlation_id(self.info.tag)},
            key=key,
            sku=sku,
        )
