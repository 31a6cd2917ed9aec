"""The committed event contracts: one JSON Schema per event type and version, and the gate.

``python -m tools.schemas`` (``make schemas``) writes ``shared/schemas/<Event>/v<N>.json``
for every registered event version. ``--check`` (``make schema-check``, run by ``make
test``) writes nothing: it compares the models with the committed files under each topic's
compatibility rule and exits 1 naming the event, the version, the field and the rule of
every breaking change. A compatible change not committed yet (a new optional field, a new
version, a new description) passes, and asks for the files to be regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.contracts.compatibility import Key, Schema, check, current_schemas

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "shared" / "schemas"


def path_of(folder: Path, key: Key) -> Path:
    event_type, version = key
    return folder / event_type / f"v{version}.json"


def text_of(schema: Schema) -> str:
    return json.dumps(schema, indent=2) + "\n"


def load(folder: Path) -> dict[Key, Schema]:
    committed = {}
    for path in sorted(folder.glob("*/v*.json")):
        key = (path.parent.name, int(path.stem.removeprefix("v")))
        committed[key] = json.loads(path.read_text())
    return committed


def write(folder: Path, schemas: Mapping[Key, Schema]) -> list[Path]:
    """Write every schema whose file differs; returns the files written. Never deletes one:
    a version whose model is gone is for the gate to refuse, not for this to hide."""
    written = []
    for key, schema in sorted(schemas.items()):
        path = path_of(folder, key)
        if not path.exists() or path.read_text() != text_of(schema):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text_of(schema))
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="the gate: compare, write nothing")
    parser.add_argument("--dir", type=Path, default=SCHEMAS, help="the committed schemas")
    args = parser.parse_args(argv)
    current = current_schemas()
    if not args.check:
        for path in write(args.dir, current):
            print(f"written: {os.path.relpath(path)}")
        return 0
    report = check(current, load(args.dir))
    for breach in report.breaches:
        print(f"BREAKING: {breach}")
    if not report.ok:
        print(
            f"schema check failed: {len(report.breaches)} breaking change(s). Make the change "
            "compatible, or publish it as a new event type (docs/events.md#schema-evolution)."
        )
        return 1
    if report.uncommitted:
        print(
            "schema check passed; compatible changes not committed yet: "
            f"{', '.join(report.uncommitted)}. Run `make schemas` and commit "
            f"{os.path.relpath(args.dir)}."
        )
    else:
        print(f"schema check passed: {len(current)} event versions, all committed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
