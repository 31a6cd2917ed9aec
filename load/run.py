"""One load run, start to verdict: the suite restarted behind the fault proxies, Locust's
customers for a while with the nemesis loose, everything healed, the backlog drained, the
checker's verdict and the report.

    prepare  infra + toxiproxy up; services restarted with SUITE_VIA_PROXY (+ pitfall modes);
             the run folder, the Kafka end offsets noted (run.json), its SKUs stocked
    load     Locust (a subprocess) | nemesis | timeline sampler, side by side; ended_at when
             Locust exits
    heal     the nemesis undoes what it did and starts whatever is down; healed_at
    drain    until every order of the run is terminal and nothing is in flight (or stuck)
    check    the invariants (load.checker), then report.html (load.report)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer

from infra import components
from infra.settings import DLQ_TOPICS, HOST, INFRA, REPO, SERVICES, TOPICS
from load import checker, report
from load.bench.httpclient import Client, HttpError
from load.bench.probe import Samples, gauge_sum, scrape
from load.customers import RetryPolicy, idempotency_key, journal_entry
from load.nemesis import ACTIONS, LiveActuator, Nemesis
from load.runinfo import REPORTS, RunDir, RunInfo, Sample, Verdict, now

TERMINAL = ("SHIPPED", "REJECTED", "CANCELLED")
# What every load run runs with: shipments leave a second after they are scheduled, so the
# customers' cancellations (0-2 s after placing) race the dispatch.
RUN_ENV = {"SUITE_VIA_PROXY": "true", "DISPATCH_DELAY_SECONDS": "1"}
HOT_UNITS = 20  # a hot SKU starts with this many units: it runs out, orders are rejected
PLENTY_UNITS = 1_000_000
STOCKING = RetryPolicy()  # a stocking restock is sent again (same key) for up to a minute
STOCKING_TIMEOUT = 10.0  # seconds: one attempt
# Drained: this many samples in a row (a second apart) with nothing in flight, so offsets the
# consumers commit every half second and the lag they report have caught up.
SETTLED = 3


@dataclass(frozen=True)
class Options:
    duration: float = 120.0  # seconds of load
    rate: float = 10.0  # orders/s offered by all customers together
    users: int = 10
    seed: int = 1
    nemesis: bool = True
    actions: tuple[str, ...] = ACTIONS
    mean_interval: float = 10.0  # seconds between nemesis actions, on average
    pitfalls: Mapping[str, str] = field(default_factory=dict)  # PITFALL_* for the services
    drain_timeout: float = 180.0  # wait this long at most for the run's orders to finish
    quiet_seconds: float = 20.0  # nothing moved for this long, nothing in flight: stop waiting
    headless: bool = True  # False: Locust's web UI on 127.0.0.1:8089, stopped by the user
    root: Path = REPORTS
    hot_skus: int = 3
    skus: int = 12


def say(message: str) -> None:
    print(f"load: {message}", flush=True)


async def end_offsets() -> dict[str, dict[int, int]]:
    """The end offset of every partition of the suite's topics: the run's records follow."""
    bootstrap = components.ports().bootstrap_servers()
    wanted = await checker.topic_partitions(bootstrap, [*TOPICS, *DLQ_TOPICS])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(wanted)
    finally:
        await consumer.stop()
    offsets: dict[str, dict[int, int]] = {}
    for tp, offset in ends.items():
        offsets.setdefault(tp.topic, {})[tp.partition] = offset
    return offsets


class Runner:
    def __init__(self, options: Options) -> None:
        self.options = options
        tag = secrets.token_hex(3)
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
        self.tag = tag
        self.ports = components.ports()
        self.clients = {name: Client(HOST, self.ports.of(name)) for name in SERVICES}
        self.urls = checker.database_urls()  # direct, not through the proxies

    # --- prepare -------------------------------------------------------------------------

    def restart_suite(self) -> None:
        say("starting PostgreSQL, Kafka, Jaeger and Toxiproxy")
        components.start(*INFRA, "toxiproxy")
        modes = ", ".join(f"{k}={v}" for k, v in self.options.pitfalls.items()) or "none"
        say(f"restarting the services behind the fault proxies (pitfall modes: {modes})")
        components.stop(*SERVICES)
        components.start(*SERVICES)

    async def prepare(self) -> tuple[RunDir, RunInfo]:
        run = RunDir.new(self.run_id, self.options.root)
        info = RunInfo(
            run_id=self.run_id,
            tag=self.tag,
            seed=self.options.seed,
            users=self.options.users,
            rate=self.options.rate,
            duration=self.options.duration,
            nemesis=self.options.nemesis,
            actions=list(self.options.actions),
            pitfalls=dict(self.options.pitfalls),
            hot_skus=[f"L{self.tag}-HOT-{i}" for i in range(self.options.hot_skus)],
            skus=[f"L{self.tag}-{i:02d}" for i in range(self.options.skus)],
            start_offsets=await end_offsets(),
            started_at=now(),
        )
        run.write_info(info)
        await self.stock_up(run, info)
        return run, info

    async def stock_up(self, run: RunDir, info: RunInfo) -> None:
        """Stock every SKU of the run with a restock of its first units; the customers may
        order them at once (the order service lets inventory decide). Restocks add (the SKUs
        are new), so the checker counts these like the restocker's: every unit put in is in
        the journal."""
        for sku in info.all_skus:
            await self.restock(run, sku, HOT_UNITS if sku in info.hot_skus else PLENTY_UNITS)

    async def restock(self, run: RunDir, sku: str, quantity: int) -> None:
        """``POST /inventory/{sku}/restock`` with an Idempotency-Key, sent again with the same
        key until answered, every attempt journaled as the customers journal theirs."""
        key, body = idempotency_key(), {"quantity": quantity}
        started, attempt = time.monotonic(), 1
        while True:
            sent_at, sending = now(), time.monotonic()
            status, text = 0, ""
            with contextlib.suppress(OSError, HttpError, TimeoutError):
                response = await asyncio.wait_for(
                    self.clients["inventory"].request(
                        "POST",
                        f"/inventory/{sku}/restock",
                        json.dumps(body).encode(),
                        {"Idempotency-Key": key},
                    ),
                    STOCKING_TIMEOUT,
                )
                status, text = response.status, response.body.decode(errors="replace")
            seconds = time.monotonic() - sending
            entry = journal_entry(
                "restock",
                status,
                sent_at,
                seconds,
                text,
                key=key,
                sku=sku,
                attempt=attempt,
                sent=body,
            )
            run.append("journal.jsonl", entry)
            if 200 <= status < 300:
                return
            if not STOCKING.again(status, attempt, time.monotonic() - started):
                raise RuntimeError(f"stocking {sku}: {status} {text[:200]!r}")
            await asyncio.sleep(STOCKING.backoff(attempt))
            attempt += 1

    # --- load ----------------------------------------------------------------------------

    def locust_argv(self, run: RunDir) -> list[str]:
        argv = [
            sys.executable, "-m", "locust",
            "-f", str(REPO / "load" / "locustfile.py"),
            "--host", f"http://{HOST}:{self.ports.order}",
            "--users", str(self.options.users),
            "--spawn-rate", str(self.options.users),
            "--csv", str(run.file("locust")),
            "--csv-full-history",
            "--html", str(run.file("locust.html")),
            "--loglevel", "WARNING",
            "--stop-timeout", "10",  # users finish their task (and its retries) at the end
        ]  # fmt: skip
        if self.options.headless:
            return [*argv, "--headless", "--run-time", f"{int(self.options.duration)}s"]
        return [*argv, "--web-host", HOST]

    async def load(self, run: RunDir, info: RunInfo) -> tuple[int, float]:
        """Locust, the nemesis and the sampler side by side, then the nemesis heals; Locust's
        exit status and when it exited (the end of the load, before any healing)."""
        stop = asyncio.Event()
        nemesis = Nemesis(run, info, LiveActuator(), mean_interval=self.options.mean_interval)
        tasks = [asyncio.create_task(self.sample(run, info, stop))]
        if self.options.nemesis:
            tasks.append(asyncio.create_task(nemesis.run(stop)))
        log = run.file("locust.log").open("ab")
        env = {**os.environ, "LOAD_RUN_DIR": str(run.path)}
        if self.options.headless:
            say(f"{self.options.rate:g} orders/s for {self.options.duration:.0f} s")
        else:
            say(f"Locust's web UI: http://{HOST}:8089 (Ctrl-C here ends the run)")
        process = await asyncio.create_subprocess_exec(
            *self.locust_argv(run), env=env, stdout=log, stderr=log, cwd=REPO
        )
        try:
            status = await process.wait()
        except asyncio.CancelledError:
            process.terminate()
            status = await process.wait()
        finally:
            stopped = now()
            log.close()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        say(f"load over (Locust exit status {status}); healing what the nemesis broke")
        await nemesis.heal()
        return status, stopped

    async def sample(self, run: RunDir, info: RunInfo, stop: asyncio.Event) -> None:
        """One Sample a second into timeline.jsonl, and a progress line every 10 s."""
        started, printed = time.monotonic(), 0.0
        while not stop.is_set():
            sample = await self.take_sample(info)
            run.append("timeline.jsonl", sample)
            elapsed = time.monotonic() - started
            if elapsed - printed >= 10:
                printed = elapsed
                statuses = ", ".join(f"{k} {v}" for k, v in sorted(sample.statuses.items()))
                down = [name for name, up in sample.up.items() if not up]
                say(
                    f"{elapsed:4.0f} s: orders {statuses or 'none yet'}; lag"
                    f" {sum(sample.lag.values()):.0f}; down: {', '.join(down) or 'nothing'}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def take_sample(self, info: RunInfo) -> Sample:
        scraped: dict[str, Samples | None] = {}
        for name, client in self.clients.items():
            try:
                scraped[name] = await asyncio.wait_for(scrape(client), 2.0)
            except (OSError, HttpError, TimeoutError):
                scraped[name] = None
        statuses = await self.statuses(info)
        return Sample(
            t=now(),
            lag={n: gauge_sum(s, "consumer_lag") for n, s in scraped.items() if s is not None},
            outbox={n: gauge_sum(s, "outbox_backlog") for n, s in scraped.items() if s is not None},
            statuses=statuses or {},
            up={name: samples is not None for name, samples in scraped.items()}
            | {"postgres": statuses is not None},
        )

    async def statuses(self, info: RunInfo) -> dict[str, int] | None:
        """Orders of the run by status; None when the database does not answer."""
        try:
            connection = await asyncio.wait_for(asyncpg.connect(self.urls["order"]), 2.0)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            rows = await connection.fetch(
                "SELECT status, count(*) AS n FROM orders WHERE customer_id LIKE $1 GROUP BY 1",
                info.customer_prefix + "%",
            )
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            await connection.close()
        return {row["status"]: int(row["n"]) for row in rows}

    # --- drain ---------------------------------------------------------------------------

    async def held(self) -> int | None:
        """Events not yet on their way: outbox rows and debounced events held, in the three
        databases (read directly: the gauges lag behind); None when one does not answer."""
        total = 0
        for service in SERVICES:
            try:
                connection = await asyncio.wait_for(asyncpg.connect(self.urls[service]), 2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                return None
            try:
                total += await connection.fetchval(
                    "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM debounced_events)"
                )
            except (OSError, asyncpg.PostgresError):
                return None
            finally:
                await connection.close()
        return total

    async def drain(self, info: RunInfo) -> bool:
        """Wait until every order of the run is terminal and nothing is in flight (no event
        held in an outbox or for debounce, no consumer lag) for ``SETTLED`` samples in a row.
        Gives up after the drain timeout, or once nothing has moved for ``quiet_seconds``
        with nothing in flight (orders a pitfall mode lost never finish). True when
        everything finished."""
        say("draining: waiting for every order of the run to finish")
        deadline = time.monotonic() + self.options.drain_timeout
        quiet = self.options.quiet_seconds
        last, still_since, settled = None, time.monotonic(), 0
        while time.monotonic() < deadline:
            sample, held = await self.take_sample(info), await self.held()
            in_flight = sum(sample.lag.values()) + (1 if held is None else held)
            open_orders = sum(n for s, n in sample.statuses.items() if s not in TERMINAL)
            clear = all(sample.up.values()) and in_flight == 0
            settled = settled + 1 if clear and open_orders == 0 else 0
            if settled >= SETTLED:
                return True
            state = (tuple(sorted(sample.statuses.items())), in_flight)
            if state != last:
                last, still_since = state, time.monotonic()
            elif clear and time.monotonic() - still_since > quiet:
                say(f"{open_orders} orders are not terminal and nothing moves: stop waiting")
                return False
            await asyncio.sleep(1.0)
        say("the drain timed out")
        return False

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


async def run(options: Options) -> tuple[RunDir, Verdict]:
    """One whole run; the run folder and the checker's verdict."""
    runner = Runner(options)
    with components.environment(RUN_ENV | dict(options.pitfalls)):
        await asyncio.to_thread(runner.restart_suite)
        run_dir, info = await runner.prepare()
        say(f"run {info.run_id}: {run_dir.path}")
        try:
            _, stopped = await runner.load(run_dir, info)
            info = replace(info, ended_at=stopped, healed_at=now())
            run_dir.write_info(info)
            if await runner.drain(info):
                info = replace(info, drained_at=now())
                run_dir.write_info(info)
        finally:
            runner.close()
    say("checking the invariants")
    verdict = await checker.check(run_dir)
    for check in verdict.checks:
        say(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    path = report.write_report(run_dir)
    say(f"report: {path}")
    return run_dir, verdict


def restart_plain() -> None:
    """The services as `make start` runs them: no proxies, no pitfall modes."""
    say("restarting the services as `make start` runs them")
    components.stop(*SERVICES)
    components.start(*SERVICES)
