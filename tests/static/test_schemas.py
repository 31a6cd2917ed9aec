"""The schema gate: each kind of breaking change fails it, naming event, version, field and
rule; an optional addition passes and asks for the committed files to be regenerated. The
comparison cases change a copy of a committed schema; the gate's own cases run the command
in a temporary git repository, whose history is the baseline."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from infra import schemas
from shared.contracts import Compatibility, compatibility_of, topic_compatibility
from shared.contracts.compatibility import (
    Key,
    Report,
    Schema,
    check,
    current_schemas,
    strongest,
)

PLACED: Key = ("OrderPlaced", 1)


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    folder = tmp_path / "schemas"
    shutil.copytree(schemas.SCHEMAS, folder)
    return folder


def gate(
    folder: Path, key: Key, change: Callable[[Schema], None], orders: Compatibility | None = None
) -> Report:
    """The gate, as if the model of ``key`` had been changed by ``change`` (and the orders
    topic had been ``orders``, when published and now)."""
    published, current = schemas.load(folder), current_schemas()
    if orders is not None:
        published, current = (
            on_topic(published, "orders", orders),
            on_topic(current, "orders", orders),
        )
    changed = copy.deepcopy(current[key])
    change(changed)
    current[key] = changed
    return check(current, published)


def on_topic(found: Mapping[Key, Schema], topic: str, rule: Compatibility) -> dict[Key, Schema]:
    """``found``, with ``rule`` as the rule of ``topic``."""
    return {
        key: {**schema, "x-compatibility": str(rule)} if schema["x-topic"] == topic else schema
        for key, schema in found.items()
    }


def broken(report: Report) -> list[tuple[str, int, int, str, str]]:
    return [(b.event_type, b.version, b.against, b.field, b.rule) for b in report.breaches]


def remove_customer_id(schema: Schema) -> None:
    del schema["properties"]["customer_id"]
    schema["required"].remove("customer_id")


def rename_customer_id(schema: Schema) -> None:
    schema["properties"]["client_id"] = schema["properties"].pop("customer_id")
    schema["required"] = ["client_id" if f == "customer_id" else f for f in schema["required"]]


def quantity_as_text(schema: Schema) -> None:
    schema["$defs"]["OrderLine"]["properties"]["quantity"] = {"type": "string"}


def require_priority(schema: Schema) -> None:
    schema["properties"]["priority"] = {"type": "integer"}
    schema["required"].append("priority")


def shorter_skus(schema: Schema) -> None:
    schema["$defs"]["OrderLine"]["properties"]["sku"]["maxLength"] = 32


@pytest.mark.parametrize(
    ("change", "field", "rules"),
    [
        (remove_customer_id, "customer_id", ["removed field"]),
        (rename_customer_id, "customer_id", ["renamed field", "new required field"]),
        (quantity_as_text, "items[].quantity", ["changed type"]),
        (require_priority, "priority", ["new required field"]),
        (shorter_skus, "items[].sku", ["narrowed constraint"]),
    ],
    ids=["removed", "renamed", "retyped", "new-required", "narrowed"],
)
def test_a_breaking_change_fails_the_gate_naming_event_version_field_and_rule(
    committed: Path, change: Callable[[Schema], None], field: str, rules: list[str]
) -> None:
    report = gate(committed, PLACED, change)
    assert not report.ok
    assert broken(report)[0] == ("OrderPlaced", 1, 1, field, rules[0])
    assert [b.rule for b in report.breaches] == rules


def test_an_optional_addition_passes_and_asks_for_the_files_to_be_regenerated(
    committed: Path,
) -> None:
    def add_gift_note(schema: Schema) -> None:
        schema["properties"]["gift_note"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}

    report = gate(committed, PLACED, add_gift_note)
    assert report.ok
    assert report.uncommitted == ["OrderPlaced v1 (changed)"]


def next_version(current: dict[Key, Schema], key: Key) -> Schema:
    """The model of ``key`` replaced by that of the next version, as a new version is made:
    the older one keeps no model, only its committed file."""
    event_type, version = key
    schema = copy.deepcopy(current.pop(key))
    schema["x-schema-version"] = version + 1
    current[(event_type, version + 1)] = schema
    return schema


def test_a_new_version_is_held_to_every_earlier_one_under_full_transitive(
    committed: Path,
) -> None:
    current = current_schemas()
    v3 = next_version(current, ("InventoryRejected", 2))
    del v3["properties"]["reason"]
    v3["required"].remove("reason")
    report = check(current, schemas.load(committed))
    assert broken(report) == [
        ("InventoryRejected", 3, 1, "reason", "removed field"),
        ("InventoryRejected", 3, 2, "reason", "removed field"),
    ]


def test_published_versions_without_a_model_are_read_by_the_current_one_under_full_transitive(
    committed: Path,
) -> None:
    published, current = schemas.load(committed), current_schemas()
    without_model = sorted(published.keys() - current.keys())
    assert without_model == [("InventoryRejected", 1), ("ShipmentDispatched", 1)]
    assert check(current, published).ok
    next_version(current, ("InventoryRejected", 2))  # an optional-only v3 reads v1 and v2
    assert check(current, published).ok


def test_a_backward_topic_lets_a_field_go_but_not_a_new_required_one(committed: Path) -> None:
    backward = Compatibility.BACKWARD
    assert gate(committed, PLACED, remove_customer_id, orders=backward).ok
    assert broken(gate(committed, PLACED, require_priority, orders=backward)) == [
        ("OrderPlaced", 1, 1, "priority", "new required field")
    ]


def unreadable(report: Report) -> list[tuple[str, int, str]]:
    return [
        (b.event_type, b.version, b.detail)
        for b in report.breaches
        if b.rule == "unreadable version"
    ]


def test_a_version_without_a_model_on_a_topic_without_a_backward_promise_fails_the_gate(
    committed: Path,
) -> None:
    forward = Compatibility.FORWARD_TRANSITIVE
    published = on_topic(schemas.load(committed), "inventory", forward)
    report = check(on_topic(current_schemas(), "inventory", forward), published)
    assert broken(report) == [("InventoryRejected", 1, 1, "(all)", "unreadable version")]
    assert "topic `inventory` is FORWARD_TRANSITIVE" in unreadable(report)[0][2]
    assert "does not promise that v2 reads it" in unreadable(report)[0][2]


def test_a_non_transitive_rule_lets_a_model_read_only_the_version_just_before_it(
    committed: Path,
) -> None:
    backward = Compatibility.BACKWARD
    published = on_topic(schemas.load(committed), "inventory", backward)
    current = on_topic(current_schemas(), "inventory", backward)
    next_version(current, ("InventoryRejected", 2))
    report = check(current, published)
    assert [(event, version) for event, version, _ in unreadable(report)] == [
        ("InventoryRejected", 1)  # v2 is read by v3, the next version; v1 by none
    ]


def test_a_published_version_whose_every_model_is_gone_fails_the_gate(committed: Path) -> None:
    current = current_schemas()
    del current[PLACED]
    assert broken(check(current, schemas.load(committed))) == [
        ("OrderPlaced", 1, 1, "(all)", "unreadable version")
    ]


def test_a_published_version_newer_than_the_newest_model_fails_the_gate(committed: Path) -> None:
    current = current_schemas()
    v2 = current.pop(("InventoryRejected", 2))
    current[("InventoryRejected", 1)] = {**v2, "x-schema-version": 1}
    assert unreadable(check(current, schemas.load(committed))) == [
        ("InventoryRejected", 2, "published, but newer than v1, the newest model")
    ]


def test_a_lowered_rule_is_a_breach_and_the_recorded_rule_still_applies(committed: Path) -> None:
    current = on_topic(current_schemas(), "orders", Compatibility.NONE)
    current[PLACED] = copy.deepcopy(current[PLACED])
    quantity_as_text(current[PLACED])
    report = check(current, schemas.load(committed))
    lowered = [b for b in report.breaches if b.rule == "lowered compatibility"]
    assert {b.event_type for b in lowered} == {
        event for (event, _), schema in current.items() if schema["x-topic"] == "orders"
    }
    assert ("OrderPlaced", 1, 1, "items[].quantity", "changed type") in broken(report)
    assert all(b.compatibility is Compatibility.FULL_TRANSITIVE for b in report.breaches)


@pytest.mark.parametrize(
    ("recorded", "now", "lowered"),
    [
        ("FULL_TRANSITIVE", "FULL", True),
        ("FULL_TRANSITIVE", "BACKWARD_TRANSITIVE", True),
        ("FULL", "FORWARD", True),
        ("BACKWARD", "NONE", True),
        ("FULL", "FULL_TRANSITIVE", False),
        ("BACKWARD", "FULL", False),
        ("NONE", "FORWARD", False),
    ],
)
def test_a_rule_is_lowered_when_it_checks_less_than_the_recorded_one(
    recorded: str, now: str, lowered: bool
) -> None:
    rule = Compatibility(now)
    assert (strongest(rule, Compatibility(recorded)) is not rule) == lowered


# --- the command, in a git repository whose history is the baseline --------------------------


def git(repo: Path, *args: str) -> None:
    identity = ["-c", "user.name=gate", "-c", "user.email=gate@example.com"]
    command = ["git", "-C", str(repo), *identity, "-c", "commit.gpgsign=false", *args]
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository; its schemas are in ``repo / "schemas"``."""
    (tmp_path / "repo").mkdir()
    git(tmp_path / "repo", "init", "--quiet")
    return tmp_path / "repo"


@pytest.fixture
def orders_rule() -> Iterator[Callable[[Compatibility], None]]:
    """Gives the orders topic a rule, as ``topic_compatibility`` in the catalog would."""
    before = compatibility_of("orders")
    yield lambda rule: topic_compatibility("orders", rule)
    topic_compatibility("orders", before)


def commit(repo: Path, message: str, files: Mapping[Key, Schema] | None = None) -> None:
    """Commit ``files`` as the whole schemas folder; without them, what ``make schemas``
    writes from the models."""
    folder = repo / "schemas"
    if files is None:
        assert schemas.main(["--dir", str(folder)]) == 0
    else:
        shutil.rmtree(folder, ignore_errors=True)
        schemas.write(folder, files)
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)


def run_gate(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = schemas.main(["--check", "--dir", str(folder)])
    out, err = capsys.readouterr()
    return code, out + err


def published_with_quantity_as_text() -> dict[Key, Schema]:
    """The schemas as published, when an order line's quantity was still text."""
    baseline = current_schemas()
    quantity_as_text(baseline[PLACED])
    return baseline


def test_a_retyped_field_fails_even_after_make_schemas_rewrote_and_committed_its_schema(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit(repo, "OrderPlaced v1 published", published_with_quantity_as_text())
    commit(repo, "quantity is an integer now; make schemas")

    # The files as they are now agree with the models: they alone would let this through.
    assert check(current_schemas(), schemas.load(repo / "schemas")).ok
    code, out = run_gate(repo / "schemas", capsys)
    assert code == 1
    assert (
        "BREAKING: OrderPlaced v1 against published v1 (FULL_TRANSITIVE): "
        "field `items[].quantity`: changed type: string -> integer. "
        "Rule: a field's type never changes: add a field with the new type."
    ) in out
    assert "published OrderPlaced v1: git show " in out
    assert "schema check failed: 1 breaking change(s)" in out


def test_setting_a_topic_to_none_in_the_same_change_does_not_switch_the_gate_off(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    orders_rule: Callable[[Compatibility], None],
) -> None:
    commit(repo, "OrderPlaced v1 published", published_with_quantity_as_text())
    orders_rule(Compatibility.NONE)
    commit(repo, "orders is NONE, quantity an integer; make schemas")

    code, out = run_gate(repo / "schemas", capsys)
    assert code == 1
    assert (
        "BREAKING: OrderPlaced v1 against published v1 (FULL_TRANSITIVE): "
        "field `x-compatibility`: lowered compatibility: "
        "topic `orders` is now NONE, git history recorded FULL_TRANSITIVE. "
        "Rule: a topic's rule is never lowered"
    ) in out
    assert "field `items[].quantity`: changed type: string -> integer" in out


def test_a_rule_raised_in_history_cannot_be_lowered_back_later(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    orders_rule: Callable[[Compatibility], None],
) -> None:
    orders_rule(Compatibility.BACKWARD)
    commit(repo, "orders is BACKWARD")
    orders_rule(Compatibility.FULL_TRANSITIVE)
    commit(repo, "orders is FULL_TRANSITIVE")
    assert run_gate(repo / "schemas", capsys)[0] == 0

    orders_rule(Compatibility.BACKWARD)
    commit(repo, "orders is BACKWARD again")
    code, out = run_gate(repo / "schemas", capsys)
    assert code == 1
    assert "topic `orders` is now BACKWARD, git history recorded FULL_TRANSITIVE" in out


def test_a_new_version_with_an_optional_field_passes_and_is_published_once_committed(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before_v2 = schemas.load(schemas.SCHEMAS)  # v1's model is gone, its file is not
    del before_v2[("InventoryRejected", 2)]
    commit(repo, "InventoryRejected v1 published", before_v2)
    code, out = run_gate(repo / "schemas", capsys)
    assert code == 0
    assert "compatible changes not committed yet: InventoryRejected v2 (new)" in out

    commit(repo, "InventoryRejected v2: optional shortfalls; make schemas")
    written = schemas.load(repo / "schemas")
    assert written == schemas.load(schemas.SCHEMAS)  # v1's file kept, v2's added
    code, out = run_gate(repo / "schemas", capsys)
    assert code == 0
    assert (
        f"schema check passed: {len(written)} published event versions (held to their first "
        f"committed form) read by the {len(current_schemas())} models, all committed."
    ) in out


def test_outside_a_git_repository_the_gate_warns_and_holds_to_the_working_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    folder = tmp_path / "copy"
    shutil.copytree(schemas.SCHEMAS, folder)
    code, out = run_gate(folder, capsys)
    assert code == 0
    assert "WARNING: schema history unavailable: `git rev-parse`" in out
    assert "not a git repository" in out


def test_in_a_shallow_clone_the_gate_warns_and_still_catches_an_unregenerated_break(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commit(repo, "published", published_with_quantity_as_text())
    clone = tmp_path / "shallow"
    command = ["git", "clone", "--quiet", "--depth", "1", repo.as_uri(), str(clone)]
    subprocess.run(command, check=True, capture_output=True)
    code, out = run_gate(clone / "schemas", capsys)
    assert "WARNING: schema history unavailable: this clone is shallow" in out
    assert code == 1  # the models retype quantity against the working tree's schema
    assert "BREAKING" in out


def test_the_committed_schemas_are_those_of_the_models() -> None:
    report = check(current_schemas(), schemas.load(schemas.SCHEMAS))
    assert report.ok, [str(b) for b in report.breaches]
    assert report.uncommitted == [], "run `make schemas` and commit shared/schemas"
