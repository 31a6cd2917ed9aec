"""Command line: ``python -m load.bench`` (``make bench``)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from load.bench.report import HEADER, row, summary, write
from load.bench.run import VARIANTS, Plan, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load.bench",
        description="Open-model load at rising rates over the running suite (docs/benchmark.md).",
    )
    parser.add_argument(
        "--rates",
        default="10,20,30,40,50,75,100,125,150,175,200,250,300",
        help="offered orders/s, one step each, rising (default %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of a step")
    parser.add_argument("--warmup", type=float, default=5, help="unreported first step, seconds")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (the first is the baseline)",
    )
    parser.add_argument(
        "--idle", type=float, default=10, help="seconds of no load measured before the steps"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the services in every variant, to measure it (repeatable), e.g."
        " --env CONSUMER_FETCH_MIN_BYTES=1024",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--instances",
        type=int,
        choices=(1, 2),
        default=1,
        help="instances of each service (2: order-2, inventory-2 and shipping-2 as well, sharing"
        " the partitions; orders go to both order instances in turn)",
    )
    return parser


def settings(items: Sequence[str]) -> dict[str, str]:
    """``--env`` items as the services' environment (a value may hold ``=``)."""
    malformed = [item for item in items if "=" not in item]
    if malformed:
        raise SystemExit(f"--env takes NAME=VALUE, not {malformed}")
    return dict(item.split("=", 1) for item in items)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    plan = Plan(
        rates=[float(r) for r in args.rates.split(",")],
        seconds=args.seconds,
        variants=variants,
        seed=args.seed,
        warmup_seconds=args.warmup,
        idle_seconds=args.idle,
        instances=args.instances,
        env=settings(args.env),
    )
    print(HEADER, flush=True)
    steps, calibration = asyncio.run(run(plan, lambda step: print(row(step), flush=True)))
    path = write(steps, vars(args), calibration=calibration)
    print(f"calibration: {calibration.describe()}")
    for key, value in summary(steps).items():
        print(f"{key}: {value}")
    print(f"report: {path} and {path.with_suffix('.png').name}")
    return 0
