"""The committed event contracts: one JSON Schema per event type and version, and the gate.

``python -m infra.schemas`` (``make schemas``) writes ``shared/schemas/<Event>/v<N>.json``
for every event version that has a model (:func:`shared.contracts.registered`: the current
one of each event, and an older one kept for an upcaster). It never deletes a file: an older
version without a model is still published, and its file is what the gate holds the models
to.

``--check`` (``make schema-check``, run by ``make test``) writes nothing. The versions it
holds are the *published* ones, enumerated from the files committed in git history, not from
the models: each one's first committed form (the commit that added the file: rewriting a
file later, ``make schemas`` included, moves nothing). It compares every model with them
under each topic's compatibility rule, never lower than the strongest rule any committed
schema of the topic recorded, and requires every published version to stay readable by a
model (:func:`shared.contracts.compatibility.check`). It exits 1 naming the event, the
version, the field and the rule of every breaking change. Without git or the full history (a
shallow clone) it warns and falls back to the schemas in the working tree. A compatible
change not committed yet (a new optional field, a new version, a new description) passes,
and asks for the files to be regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.contracts import Compatibility
from shared.contracts.compatibility import (
    RULE_FIELD,
    Key,
    Schema,
    check,
    current_schemas,
    strongest,
)

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
    a version whose model is gone is still published, read by a later model, and its file is
    the gate's record of it (the gate refuses it only once no model can read it)."""
    written = []
    for key, schema in sorted(schemas.items()):
        path = path_of(folder, key)
        if not path.exists() or path.read_text() != text_of(schema):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text_of(schema))
            written.append(path)
    return written


class HistoryUnavailableError(Exception):
    """git, or the history of the schemas folder, is not there to compare with."""


@dataclass(frozen=True)
class Published:
    schemas: dict[Key, Schema]  # each version as the commit that added its file wrote it
    commits: dict[Key, str]  # that commit
    rules: dict[str, Compatibility]  # per topic, the strongest rule any committed file recorded


_FILE = re.compile(r"([^/]+)/v([0-9]+)\.json")
_RULE = re.compile(rf'^\+.*"{RULE_FIELD}": *"([A-Z_]+)"')


def published(folder: Path) -> Published:
    """What readers out there were built with, read from the git history of ``folder``.

    The first commit that added a ``v<N>.json`` (renames count as additions) is the one its
    readers may have been built from, so its form is the baseline; a later commit cannot move
    it. The merge base with a main branch would not do: on main itself it is HEAD, the very
    commit that rewrote the file. Rules are read from every committed form of every file, so
    raising a rule and lowering it back later is seen too."""
    if git(folder, "rev-parse", "--is-shallow-repository").strip() == "true":
        raise HistoryUnavailableError(
            "this clone is shallow, its history stops short (`git fetch --unshallow`)"
        )
    commits: dict[Key, str] = {}
    log = ["log", "--no-renames", "--relative"]
    added = git(
        folder, *log, "--diff-filter=A", "--reverse", "--format=@%H", "--name-only", "--", "."
    )
    for line in added.splitlines():
        if line.startswith("@"):
            commit = line[1:]
        elif file := _FILE.fullmatch(line):
            commits.setdefault((file[1], int(file[2])), commit)
    schemas = {
        key: json.loads(git(folder, "show", f"{commit}:./{key[0]}/v{key[1]}.json"))
        for key, commit in commits.items()
    }
    recorded: dict[str, list[Compatibility]] = {}
    topic: str | None = None
    changes = git(folder, *log, "-p", "-G", RULE_FIELD, "--format=", "--", ".")
    for line in changes.splitlines():
        if line.startswith("+++ "):
            file = _FILE.fullmatch(line.removeprefix("+++ b/"))
            key = (file[1], int(file[2])) if file else None
            topic = schemas[key]["x-topic"] if key in schemas else None
        elif topic and (rule := _RULE.match(line)) and rule[1] in Compatibility.__members__:
            recorded.setdefault(topic, []).append(Compatibility(rule[1]))
    rules = {topic: strongest(*found) for topic, found in recorded.items()}
    return Published(schemas, commits, rules)


def git(folder: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise HistoryUnavailableError("git is not installed") from None
    if done.returncode != 0:
        raise HistoryUnavailableError(f"`git {args[0]}` in {folder}: {done.stderr.strip()}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="the gate: compare, write nothing")
    parser.add_argument(
        "--dir", type=Path, default=SCHEMAS, help="the schemas folder, in a full git clone"
    )
    args = parser.parse_args(argv)
    current = current_schemas()
    if not args.check:
        for path in write(args.dir, current):
            print(f"written: {os.path.relpath(path)}")
        return 0
    try:
        history = published(args.dir)
    except HistoryUnavailableError as error:
        # A CI that checks out one commit must not fail every build; it gets the weaker gate,
        # and says so: the schemas in the working tree, which a change can rewrite.
        print(
            f"WARNING: schema history unavailable: {error}. The gate holds every event "
            "version to its first committed form in git history, which needs git and the "
            "whole history (a full clone); it falls back to the schemas in the working tree, "
            "which `make schemas` in the same change can rewrite.",
            file=sys.stderr,
        )
        history = Published(load(args.dir), {}, {})
    report = check(current, history.schemas, recorded=history.rules, written=load(args.dir))
    for breach in report.breaches:
        print(f"BREAKING: {breach}")
    if not report.ok:
        against = {(b.event_type, b.against) for b in report.breaches if b.field != RULE_FIELD}
        for key in sorted(against & history.commits.keys()):
            where = os.path.relpath(path_of(args.dir, key))
            print(f"published {key[0]} v{key[1]}: git show {history.commits[key][:12]}:./{where}")
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
        print(
            f"schema check passed: {len(history.schemas)} published event versions (held to "
            f"their first committed form) read by the {len(current)} models, all committed."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
