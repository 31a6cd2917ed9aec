"""Command line: `python -m infra <command>` (the Makefile's targets call it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from infra import components, kafka
from infra.foreground import run
from infra.install import ensure_browser
from infra.services import admin_token_path
from infra.settings import ALL_COMPONENTS, REPO, SERVICE_PROCESSES, InfraError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra",
        description="Run PostgreSQL, Kafka, Jaeger and the services natively (state in .state/).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    install = commands.add_parser(
        "install", help="fetch/build PostgreSQL, Kafka and Jaeger (cached)"
    )
    install.add_argument("components", nargs="*", metavar="component", help="e.g. toxiproxy")
    commands.add_parser("install-browser", help="Debian's Chromium + ChromeDriver (browser tests)")
    start = commands.add_parser("start", help="start what is not running, detached")
    start.add_argument("--infra-only", action="store_true", help="PostgreSQL, Kafka, Jaeger only")
    start.add_argument("components", nargs="*", metavar="component")
    commands.add_parser("run", help="start everything, follow logs; Ctrl-C stops everything")
    stop = commands.add_parser("stop", help="stop components (default: all)")
    stop.add_argument("components", nargs="*", metavar="component")
    kill = commands.add_parser("kill", help="SIGKILL a component (chaos)")
    kill.add_argument("component", choices=ALL_COMPONENTS)
    restart = commands.add_parser("restart", help="stop then start a component")
    restart.add_argument("component", choices=ALL_COMPONENTS)
    status = commands.add_parser("status", help="pid, port and state of every component")
    status.add_argument("components", nargs="*", metavar="component")
    env = commands.add_parser("env", help="print the environment a service gets (KEY=value)")
    env.add_argument("service", nargs="?", choices=SERVICE_PROCESSES)
    return parser


def _print_status(names: Sequence[str]) -> None:
    rows = [("COMPONENT", "PID", "PORT", "STATE", "LOG")]
    for item in components.status(*names):
        pid = str(item.pid) if item.pid is not None else "-"
        rows.append((item.name, pid, str(item.port), item.state, str(item.log)))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]))
    print(kafka.cluster_summary(components.ports()))
    print(_admin_token_whereabouts())


def _admin_token_whereabouts() -> str:
    path = admin_token_path()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    if path.is_file():
        where = f"admin token: in {shown} (`Authorization: Bearer $(cat {shown})`)"
    else:
        where = f"admin token: none yet; the first start writes it to {shown}"
    return where + "; ADMIN_TOKEN, when set, overrides it"


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "install":
        components.install(*args.components)
    elif command == "install-browser":
        ensure_browser()
    elif command == "start":
        components.start(*args.components, infra_only=args.infra_only)
    elif command == "run":
        return run()
    elif command == "stop":
        components.stop(*args.components)
    elif command == "kill":
        components.kill(args.component)
    elif command == "restart":
        components.restart(args.component)
    elif command == "status":
        _print_status(args.components)
    elif command == "env":
        for key, value in components.service_env(args.service).items():
            print(f"{key}={value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InfraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Detached components keep running; `stop` ends them.
        print("interrupted", file=sys.stderr)
        return 130
