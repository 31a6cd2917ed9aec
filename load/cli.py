"""Command line: ``python -m load`` (``make load``, ``make load-ui``)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from load import checker, report
from load.nemesis import ACTIONS
from load.run import Options, restart_plain, run
from load.runinfo import RunDir

# Each one a PITFALL_* switch of the services (docs/pitfalls.md); `unkeyed` is a provocation
# more than a pitfall: the sequence check absorbs it, without it check 17 fails.
PITFALLS = (
    "naive-dual-write",
    "no-dedup",
    "no-sequence-check",
    "auto-commit",
    "no-debounce",
    "unkeyed",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load",
        description="Locust customers + chaos nemesis + consistency checker (docs/load.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, help_text in (
        ("run", "a headless run: load, nemesis, drain, check, report"),
        ("ui", "the same with Locust's web UI on 127.0.0.1:8089 (Ctrl-C ends the run)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--duration", type=float, default=120, help="seconds of load")
        command.add_argument("--rate", type=float, default=10, help="orders/s offered")
        command.add_argument("--users", type=int, default=10, help="Locust users")
        command.add_argument("--seed", type=int, default=1, help="nemesis and customers")
        command.add_argument(
            "--nemesis", action=argparse.BooleanOptionalAction, default=name == "run"
        )
        command.add_argument(
            "--actions",
            default=",".join(ACTIONS),
            help="nemesis actions, comma-separated (default: all): %(default)s",
        )
        command.add_argument(
            "--mean-interval", type=float, default=10, help="seconds between nemesis actions"
        )
        command.add_argument(
            "--pitfall",
            action="append",
            default=[],
            choices=PITFALLS,
            help="run the services in this pitfall mode (repeatable): the checker should fail",
        )
        command.add_argument(
            "--keep", action="store_true", help="leave the services as the run ran them"
        )
    for name, help_text in (
        ("check", "run the checker again over a run folder"),
        ("report", "write a run folder's report.html again"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("folder", type=Path)
    return parser


def _options(args: argparse.Namespace) -> Options:
    pitfalls = {f"PITFALL_{name.upper().replace('-', '_')}": "true" for name in args.pitfall}
    return Options(
        duration=args.duration,
        rate=args.rate,
        users=args.users,
        seed=args.seed,
        nemesis=args.nemesis,
        actions=tuple(a.strip() for a in args.actions.split(",") if a.strip()),
        mean_interval=args.mean_interval,
        pitfalls=pitfalls,
        headless=args.command == "run",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return checker.main([str(args.folder)])
    if args.command == "report":
        print(report.write_report(RunDir(args.folder)))
        return 0
    _, verdict = asyncio.run(run(_options(args)))
    if not args.keep:
        restart_plain()
    return 0 if verdict.ok else 1
