"""The schema gate: each kind of breaking change fails it, naming event, version, field and
rule; an optional addition passes and asks for the committed files to be regenerated. Each
case changes a copy of a committed schema; the committed folder is copied to a temp dir."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.contracts.compatibility import Key, Report, Schema, check, current_schemas
from tools import schemas

PLACED: Key = ("OrderPlaced", 1)


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    folder = tmp_path / "schemas"
    shutil.copytree(schemas.SCHEMAS, folder)
    return folder


def gate(folder: Path, key: Key, change: Callable[[Schema], None]) -> Report:
    """The gate, as if the model of ``key`` had been changed by ``change``."""
    current = current_schemas()
    changed = copy.deepcopy(current[key])
    change(changed)
    current[key] = changed
    return check(current, schemas.load(folder))


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


def test_a_new_version_is_held_to_every_earlier_one_under_full_transitive(
    committed: Path,
) -> None:
    def drop_reason(schema: Schema) -> None:
        schema["x-schema-version"] = 3
        del schema["properties"]["reason"]
        schema["required"].remove("reason")

    current = current_schemas()
    v3 = copy.deepcopy(current[("InventoryRejected", 2)])
    drop_reason(v3)
    report = check({**current, ("InventoryRejected", 3): v3}, schemas.load(committed))
    assert broken(report) == [
        ("InventoryRejected", 3, 1, "reason", "removed field"),
        ("InventoryRejected", 3, 2, "reason", "removed field"),
    ]


def test_a_backward_topic_lets_a_field_go_but_not_a_new_required_one(committed: Path) -> None:
    def backward(change: Callable[[Schema], None]) -> Callable[[Schema], None]:
        def changed(schema: Schema) -> None:
            schema["x-compatibility"] = "BACKWARD"
            change(schema)

        return changed

    assert gate(committed, PLACED, backward(remove_customer_id)).ok
    assert broken(gate(committed, PLACED, backward(require_priority))) == [
        ("OrderPlaced", 1, 1, "priority", "new required field")
    ]


def test_a_committed_version_whose_model_is_gone_fails_the_gate(committed: Path) -> None:
    current = current_schemas()
    del current[("InventoryRejected", 1)]
    assert broken(check(current, schemas.load(committed))) == [
        ("InventoryRejected", 1, 1, "(all)", "removed version")
    ]


def test_the_command_exits_1_naming_the_breach_of_a_model_against_a_modified_copy(
    committed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The committed copy had a required field the model does not have: the model removed it.
    path = schemas.path_of(committed, PLACED)
    schema = json.loads(path.read_text())
    schema["properties"]["customer_email"] = {"type": "string"}
    schema["required"].append("customer_email")
    path.write_text(schemas.text_of(schema))

    assert schemas.main(["--check", "--dir", str(committed)]) == 1
    out = capsys.readouterr().out
    assert "BREAKING: OrderPlaced v1 against committed v1 (FULL_TRANSITIVE)" in out
    assert "field `customer_email`: removed field" in out
    assert "schema check failed: 1 breaking change(s)" in out


def test_the_command_writes_the_files_it_then_passes(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    assert schemas.main(["--dir", str(folder)]) == 0
    assert schemas.load(folder) == current_schemas()
    assert schemas.main(["--check", "--dir", str(folder)]) == 0


def test_the_committed_schemas_are_those_of_the_models() -> None:
    report = check(current_schemas(), schemas.load(schemas.SCHEMAS))
    assert report.ok, [str(b) for b in report.breaches]
    assert report.uncommitted == [], "run `make schemas` and commit shared/schemas"
