"""The benchmark's steps: restart the services with the bench settings, offer a rate for a
while, wait for the orders to finish, and read what it cost and how long it took."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from infra import components
from infra.settings import HOST, INFRA, SECOND_INSTANCES, SERVICES, first_instance
from load.bench import calibrate, census
from load.bench.calibrate import Baseline, Calibration, Idle
from load.bench.httpclient import Client
from load.bench.load import Sent, offer
from load.bench.probe import (
    TERMINAL,
    Histogram,
    Outcome,
    Samples,
    cpu_snapshot,
    gauge_sum,
    known_skus,
    outcomes,
    percentile,
    scrape,
)

SKUS = [f"BENCH-{i:02d}" for i in range(20)]
# What every variant runs with: shipments leave at once (the dispatcher's alarm rings as
# each one is scheduled; its poll interval stays the default).
BENCH_ENV = {"DISPATCH_DELAY_SECONDS": "0"}
VARIANTS: dict[str, dict[str, str]] = {
    "outbox": {},  # the suite as it ships: outbox, tracing sampled at 100%
    "naive dual write": {"PITFALL_NAIVE_DUAL_WRITE": "true"},
    "tracing off": {"OTEL_SDK_DISABLED": "true"},
    # One order in ten traced, whole: each hop follows the traceparent it received.
    "sampled 10%": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}
SETTLE_SECONDS = 5.0  # every order terminal within this after a step, or it is not sustained
SHIPPED_P99_LIMIT = 1.0


@dataclass
class Step:
    """The figures of one rate, as the JSON file and the table show them."""

    variant: str
    offered: float
    seconds: float
    sent: int
    accepted: int
    achieved: float
    post_ms: dict[str, float | None]
    confirmed_ms: dict[str, float | None]
    shipped_ms: dict[str, float | None]
    relay_ms: dict[str, float | None]
    terminal_within_settle: float
    lag_after_settle: float
    drained_seconds: float | None
    cpu_ms_per_order: dict[str, float]
    # Counts that do not move with the machine's speed (census.Counters, spans), per order.
    per_order: dict[str, float | None] = field(default_factory=dict)
    machine: calibrate.MachineCpu | None = None
    sustained: bool = field(init=False)

    def __post_init__(self) -> None:
        p99 = self.shipped_ms["p99"]
        self.sustained = (
            self.accepted == self.sent
            and self.terminal_within_settle == 1.0
            and p99 is not None
            and p99 < SHIPPED_P99_LIMIT * 1000
        )

    @property
    def service_cpu_ms(self) -> float:
        return sum(self.cpu_ms_per_order.get(name, 0.0) for name in SERVICES)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


class Suite:
    """The running suite as the benchmark drives it (services restarted per variant), with
    one or two instances of each service (``order`` and ``order-2``, ...)."""

    def __init__(self, instances: int = 1) -> None:
        self.ports = components.ports()
        self.processes = (*SERVICES, *SECOND_INSTANCES) if instances == 2 else SERVICES
        self.clients = {name: Client(HOST, self.ports.of(name)) for name in self.processes}
        self.order_db = components.service_env("order")["DATABASE_URL"]
        self.database = census.Database(self.order_db)
        self.jaeger = f"http://{HOST}:{self.ports.jaeger_ui}"
        self._order_connection: asyncpg.Connection | None = None

    @property
    def order_clients(self) -> list[Client]:
        return [c for name, c in self.clients.items() if first_instance(name) == "order"]

    def restart_services(self, env: Mapping[str, str]) -> None:
        components.start(*INFRA)
        components.stop(*SERVICES, *SECOND_INSTANCES)  # a second instance left running shares
        with components.environment(env):  # the partitions, and would skew the figures
            components.start(*self.processes)
        for client in self.clients.values():
            client.close()

    def pids(self) -> dict[str, int]:
        found = {name: components.pid(name) for name in (*self.processes, *INFRA)}
        return {name: pid for name, pid in found.items() if pid is not None}

    async def stock_up(self, units: int) -> None:
        """Put ``units`` of every bench SKU on the shelf, and wait until the order service
        has heard of them all (its catalog replica follows the stock topic)."""
        inventory = self.clients["inventory"]
        for sku in SKUS:
            body = json.dumps({"available": units}).encode()
            response = await inventory.request("PUT", f"/inventory/{sku}", body)
            if response.status != 200:
                raise RuntimeError(f"restocking {sku}: {response.status} {response.body!r}")
        deadline = time.monotonic() + 60
        while await known_skus(self.order_db, SKUS) < len(SKUS):
            if time.monotonic() > deadline:
                raise RuntimeError("the order service did not learn the bench SKUs within 60 s")
            await asyncio.sleep(0.5)

    async def scrape_all(self) -> dict[str, Samples]:
        return {name: await scrape(client) for name, client in self.clients.items()}

    async def outcomes(self, ids: list[UUID]) -> dict[UUID, Outcome]:
        """On one connection, kept open: its statement is prepared once, so each read is
        one statement and one transaction, which the census takes out."""
        if self._order_connection is None or self._order_connection.is_closed():
            self._order_connection = await asyncpg.connect(self.order_db)
        return await outcomes(self._order_connection, ids)

    async def close(self) -> None:
        for client in self.clients.values():
            client.close()
        if self._order_connection is not None:
            await self._order_connection.close()


async def run_step(
    suite: Suite,
    variant: str,
    rate: float,
    seconds: float,
    rng: random.Random,
    drain_seconds: float = 60.0,
    baseline: Baseline | None = None,
) -> Step:
    """Offer ``rate`` orders/s for ``seconds``, then wait for every order to be terminal
    (judged after ``SETTLE_SECONDS``, waited for up to ``drain_seconds``)."""
    pids = suite.pids()
    await suite.database.reset()
    statements_before, transactions_before = await suite.database.counts()
    logs = census.log_sizes(suite.processes)
    cpu_before, metrics_before = cpu_snapshot(pids), await suite.scrape_all()
    busy_before, _ = calibrate.machine_busy_seconds()
    started, wall_started = time.monotonic(), time.time()
    sent = await offer(suite.order_clients, rate, seconds, SKUS, rng)
    ended = time.monotonic()
    ids = [s.order_id for s in sent if s.order_id is not None]

    finished: dict[UUID, Outcome] = {}
    settled, lag, drained = 0.0, 0.0, None
    while True:
        finished = await suite.outcomes(ids)
        terminal = sum(1 for o in finished.values() if o.status in TERMINAL)
        waited = time.monotonic() - ended
        if waited <= SETTLE_SECONDS:
            settled = terminal / len(ids) if ids else 1.0
            lag = sum(gauge_sum(s, "consumer_lag") for s in (await suite.scrape_all()).values())
        if terminal == len(ids):
            drained = waited
            break
        if waited > drain_seconds:
            break
        await asyncio.sleep(0.2)
    busy_after, _ = calibrate.machine_busy_seconds()
    wall = time.monotonic() - started
    cpu_after, metrics_after = cpu_snapshot(pids), await suite.scrape_all()
    statements_after, _ = await suite.database.counts()
    log_lines = census.log_lines_since(logs)
    wall_ended = time.time()
    # pg_stat_database hears of a backend's transactions when it next goes idle (within 1 s).
    await asyncio.sleep(1.1)
    _, transactions_after = await suite.database.counts()
    spans = await census.spans_after_export(suite.jaeger, wall_started, wall_ended, time.time())

    step = _figures(
        variant, rate, seconds, sent, finished, (settled, lag, drained),
        (cpu_before, cpu_after), (metrics_before, metrics_after),
    )  # fmt: skip
    relay_before, fetches_before = census.kafka_counts(metrics_before)
    relay_after, fetches_after = census.kafka_counts(metrics_after)
    before = census.Counters(
        statements_before, transactions_before, relay_before, fetches_before, 0
    )
    after = census.Counters(
        statements_after, transactions_after, relay_after, fetches_after, log_lines
    )
    own = cpu_after["load generator"] - cpu_before["load generator"]
    return dataclasses.replace(
        step,
        per_order=census.per_order(before, after, step.accepted, spans),
        machine=calibrate.machine_cpu(
            busy_after - busy_before, own, wall, step.accepted, baseline or Baseline()
        ),
    )


def _figures(
    variant: str,
    rate: float,
    seconds: float,
    sent: list[Sent],
    finished: dict[UUID, Outcome],
    settle: tuple[float, float, float | None],
    cpu: tuple[dict[str, float], dict[str, float]],
    metrics: tuple[dict[str, Samples], dict[str, Samples]],
) -> Step:
    accepted = [s for s in sent if s.status == 202]
    post = [s.latency for s in sent]
    shipped = [o.seconds for o in finished.values() if o.status == "SHIPPED"]
    before, after = metrics
    confirmed = Histogram.total(  # every order service instance's
        Histogram.between(
            before[name], after[name], "aggregate_status_age_seconds", status="CONFIRMED"
        )
        for name in before
        if first_instance(name) == "order"
    )
    relay = Histogram.total(  # every relay together
        Histogram.between(before[name], after[name], "outbox_write_to_ack_seconds")
        for name in before
    )
    orders = max(len(accepted), 1)
    cpu_ms: dict[str, float] = {}
    for name in cpu[1]:  # a second instance's CPU counts for its service
        used = (cpu[1][name] - cpu[0].get(name, 0.0)) * 1000 / orders
        cpu_ms[first_instance(name)] = cpu_ms.get(first_instance(name), 0.0) + used
    return Step(
        variant=variant,
        offered=rate,
        seconds=seconds,
        sent=len(sent),
        accepted=len(accepted),
        achieved=round(len(accepted) / seconds, 1),
        post_ms={"p50": _ms(percentile(post, 0.5)), "p99": _ms(percentile(post, 0.99))},
        confirmed_ms={f"p{q}": _ms(confirmed.quantile(q / 100)) for q in (50, 95, 99)},
        shipped_ms={f"p{q}": _ms(percentile(shipped, q / 100)) for q in (50, 95, 99)},
        relay_ms={f"p{q}": _ms(relay.quantile(q / 100)) for q in (50, 99)},
        terminal_within_settle=round(settle[0], 4),
        lag_after_settle=settle[1],
        drained_seconds=None if settle[2] is None else round(settle[2], 1),
        cpu_ms_per_order={name: round(used, 2) for name, used in cpu_ms.items()},
    )


@dataclass
class Plan:
    rates: list[float]
    seconds: float
    variants: list[str]
    seed: int = 7
    warmup_seconds: float = 5.0
    stock: int = 10_000_000
    instances: int = 1
    idle_seconds: float = 10.0
    env: dict[str, str] = field(default_factory=dict)  # on top of each variant's (--env)


async def run(plan: Plan, report: Callable[[Step], None]) -> tuple[list[Step], Calibration]:
    """Every variant over the rising rates, each until its first unsustained step; the
    calibration once, with the first variant's services running idle."""
    suite = Suite(plan.instances)
    steps: list[Step] = []
    calibration: Calibration | None = None
    idles: dict[str, Idle] = {}
    for variant in plan.variants:
        print(f"==> {variant}: restarting the services", flush=True)
        suite.restart_services(BENCH_ENV | VARIANTS[variant] | plan.env)
        await suite.stock_up(plan.stock)
        rng = random.Random(plan.seed)
        print(f"    warming up for {plan.warmup_seconds:.0f} s", flush=True)
        await run_step(suite, variant, min(plan.rates), plan.warmup_seconds, rng)
        idles[variant] = await calibrate.idle(plan.idle_seconds)
        print(f"    idle: {idles[variant].busy_cores:.3f} cores busy", flush=True)
        if calibration is None:
            calibration = await asyncio.to_thread(calibrate.calibrate, suite.ports)
            print(f"    calibration: {calibration.describe()}", flush=True)
        baseline = calibration.baseline(idles[variant])
        for rate in plan.rates:
            step = await run_step(suite, variant, rate, plan.seconds, rng, baseline=baseline)
            steps.append(step)
            report(step)
            if not step.sustained:
                break
    await suite.close()
    assert calibration is not None or not plan.variants
    return steps, calibration or Calibration(None, None)
