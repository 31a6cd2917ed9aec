"""Dead-letter queue CLI for scripts: the same operations as ``/admin/dlq``.

    python -m shared.service.dlq list inventory [--pending] [--correlation-id ID]
        [--aggregate-id ID]
    python -m shared.service.dlq show inventory 12
    python -m shared.service.dlq replay inventory 12
    python -m shared.service.dlq replay-stream inventory 3f2c1d4e-... [--source order]

``replay-stream`` replays every pending letter of one aggregate's stream, in sequence order.

The service's URL defaults to the native ports (``ORDER_PORT``, ``INVENTORY_PORT``,
``SHIPPING_PORT``, or 8001-8003); ``--url`` overrides it. The token is ``ADMIN_TOKEN``, else
the one the native launcher wrote to ``.state/admin-token`` (looked for from the current
directory up).
Exit status: 0 done, 1 refused (404, 409, ...), 2 usage or connection error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

DEFAULT_PORTS = {"order": 8001, "inventory": 8002, "shipping": 8003}


def base_url(service: str) -> str:
    port = os.environ.get(f"{service.upper()}_PORT", str(DEFAULT_PORTS[service]))
    return f"http://127.0.0.1:{port}"


def admin_token(start: Path | None = None) -> str | None:
    """``ADMIN_TOKEN``, else the launcher's ``.state/admin-token`` in ``start`` (the current
    directory) or the nearest of its parents that has one."""
    if given := os.environ.get("ADMIN_TOKEN", "").strip():
        return given
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / ".state" / "admin-token"
        if path.is_file():
            return path.read_text().strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.service.dlq", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["list", "show", "replay", "replay-stream"])
    parser.add_argument("service", choices=sorted(DEFAULT_PORTS))
    parser.add_argument("id", nargs="?", help="a dead-letter id (replay-stream: an aggregate id)")
    parser.add_argument("--url", help="the service's base URL")
    parser.add_argument("--pending", action="store_true", help="only letters not replayed")
    parser.add_argument("--correlation-id")
    parser.add_argument("--aggregate-id", help="list: only this aggregate's letters")
    parser.add_argument("--source", help="replay-stream: only the stream from this source")
    parser.add_argument("--aggregate-type", help="replay-stream: only this aggregate type")
    args = parser.parse_args(argv)
    if args.command == "replay-stream" and not args.id:
        parser.error("replay-stream needs an aggregate id")
    if args.command in ("show", "replay") and not (args.id or "").isdigit():
        parser.error(f"{args.command} needs a dead-letter id (a number)")
    url = (args.url or base_url(args.service)).rstrip("/") + "/admin/dlq"
    token = admin_token()
    if token is None:
        print(
            "no admin token: set ADMIN_TOKEN, or run from the repository whose launcher wrote"
            " .state/admin-token",
            file=sys.stderr,
        )
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(timeout=10, headers=headers) as client:
            if args.command == "list":
                params: dict[str, str] = {}
                if args.pending:
                    params["pending"] = "true"
                if args.correlation_id:
                    params["correlation_id"] = args.correlation_id
                if args.aggregate_id:
                    params["aggregate_id"] = args.aggregate_id
                response = client.get(url, params=params)
            elif args.command == "show":
                response = client.get(f"{url}/{args.id}")
            elif args.command == "replay":
                response = client.post(f"{url}/{args.id}/replay")
            else:
                stream = {
                    "aggregate_id": args.id,
                    "source": args.source,
                    "aggregate_type": args.aggregate_type,
                }
                response = client.post(f"{url}/streams/replay", json=stream)
    except httpx.HTTPError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
