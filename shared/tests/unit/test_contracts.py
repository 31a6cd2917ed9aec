"""Reading every version: an older one with the current model, where the topic's rule promises
it, or through an upcaster where its data is transformed; newer ones by the tolerant reader
where the rule promises it; the rest refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from jsonschema import (  # type: ignore[import-untyped]  # no stubs in the lock file
    Draft202012Validator,
    FormatChecker,
)
from pydantic import Field

from shared import contracts
from shared.consuming.routing import Router
from shared.contracts import (
    Compatibility,
    IntegrationEvent,
    InvalidPayloadError,
    UnknownEventError,
    current,
    decode_payload,
    integration_event,
    reader_of,
    registered,
    spec_of,
    upcaster,
)
from shared.contracts.catalog import InventoryRejected, ShipmentDispatched, Shortfall
from shared.testing.fakes import InMemoryUnitOfWork

ORDER_ID = uuid4()
SHIPMENT_ID = uuid4()
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def committed_schema(event_type: str, version: int) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / event_type / f"v{version}.json").read_text())
    return schema


# --- a published version without a model, read with the current one ------------------------

# One payload per published version that has no model any more, as an old producer wrote it
# (each is checked against the version's committed schema), and what today's consumer reads.
OLD_PAYLOADS: dict[tuple[str, int], tuple[dict[str, Any], IntegrationEvent]] = {
    ("InventoryRejected", 1): (
        {"order_id": str(ORDER_ID), "reason": "B: 2 wanted, 1 available"},
        InventoryRejected(order_id=ORDER_ID, reason="B: 2 wanted, 1 available", shortfalls=()),
    ),
    ("ShipmentDispatched", 1): (
        {"order_id": str(ORDER_ID), "shipment_id": str(SHIPMENT_ID)},
        ShipmentDispatched(order_id=ORDER_ID, shipment_id=SHIPMENT_ID, shipping_address=None),
    ),
}


def test_every_published_version_without_a_model_has_an_old_payload_to_test_it_with() -> None:
    published = {
        (path.parent.name, int(path.stem.removeprefix("v"))) for path in SCHEMAS.glob("*/v*.json")
    }
    models = {(spec.event_type, spec.schema_version) for spec in registered()}
    assert set(OLD_PAYLOADS) == published - models


@pytest.mark.parametrize("key", OLD_PAYLOADS, ids=lambda key: f"{key[0]}-v{key[1]}")
def test_a_payload_an_old_producer_wrote_decodes_into_the_current_model(
    key: tuple[str, int],
) -> None:
    raw, expected = OLD_PAYLOADS[key]
    event_type, version = key
    validator = Draft202012Validator(
        committed_schema(event_type, version), format_checker=FormatChecker()
    )
    validator.validate(raw)  # what that version's producers wrote

    decoded = decode_payload(event_type, version, raw)

    assert type(decoded) is current(event_type).model
    assert current(event_type).schema_version > version
    assert decoded == expected


def test_the_copy_only_older_models_are_gone_and_producers_publish_the_current_version() -> None:
    versions = {
        event: [s.schema_version for s in registered() if s.event_type == event]
        for event in ("InventoryRejected", "ShipmentDispatched")
    }
    assert versions == {"InventoryRejected": [2], "ShipmentDispatched": [2]}
    assert spec_of(InventoryRejected(order_id=ORDER_ID, reason="r")).schema_version == 2


def test_a_v2_payload_decodes_with_its_shortfalls() -> None:
    event = InventoryRejected(
        order_id=ORDER_ID, reason="r", shortfalls=(Shortfall(sku="B", wanted=2, available=1),)
    )
    assert decode_payload("InventoryRejected", 2, event.model_dump(mode="json")) == event


def test_a_v1_payload_that_does_not_read_as_the_current_model_is_refused() -> None:
    with pytest.raises(InvalidPayloadError, match=r"InventoryRejected v1 \(read as v2\)"):
        decode_payload("InventoryRejected", 1, {"order_id": str(ORDER_ID)})


def test_an_older_version_on_a_topic_without_a_backward_promise_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(contracts._RULES, "inventory", Compatibility.FORWARD_TRANSITIVE)
    raw, _ = OLD_PAYLOADS[("InventoryRejected", 1)]
    with pytest.raises(UnknownEventError, match="does not promise that v2 reads it"):
        decode_payload("InventoryRejected", 1, raw)


@pytest.mark.parametrize(
    ("written", "models", "rule", "reader"),
    [
        (2, [2], Compatibility.NONE, 2),  # its own model
        (1, [2], Compatibility.BACKWARD, 2),  # the very next version
        (1, [2], Compatibility.FULL, 2),
        (1, [3], Compatibility.BACKWARD, None),  # two back needs a transitive rule
        (1, [3], Compatibility.BACKWARD_TRANSITIVE, 3),
        (1, [3], Compatibility.FULL_TRANSITIVE, 3),
        (1, [2], Compatibility.FORWARD_TRANSITIVE, None),  # promises the other direction
        (1, [2], Compatibility.NONE, None),
        (1, [2, 3], Compatibility.FULL_TRANSITIVE, 2),  # the next model up: a kept one
        (2, [1, 3], Compatibility.FULL, 3),
    ],
)
def test_an_older_version_is_read_by_its_own_model_or_the_next_one_the_rule_promises(
    written: int, models: list[int], rule: Compatibility, reader: int | None
) -> None:
    assert reader_of(written, models, rule) == reader


# --- newer versions ---------------------------------------------------------------------------


def test_a_newer_version_on_a_full_topic_is_read_as_the_current_one() -> None:
    raw = {"order_id": str(ORDER_ID), "reason": "r", "added_in_v3": [1, 2]}
    assert decode_payload("InventoryRejected", 3, raw) == InventoryRejected(
        order_id=ORDER_ID, reason="r"
    )


def test_a_newer_version_that_does_not_read_as_the_current_one_is_refused() -> None:
    with pytest.raises(InvalidPayloadError, match="v3 is newer than v2 and does not read"):
        decode_payload("InventoryRejected", 3, {"order_id": str(ORDER_ID), "why": "renamed"})


def test_a_newer_version_on_a_backward_topic_is_refused_as_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(contracts._RULES, "inventory", Compatibility.BACKWARD)
    with pytest.raises(UnknownEventError, match=r"schema_version=3.*upgrade this consumer"):
        decode_payload("InventoryRejected", 3, {"order_id": str(ORDER_ID), "reason": "r"})


# --- an upcaster, where data is transformed: a test-only event ---------------------------------
#
# ParcelWeighed v1 {parcel_id, weight_lb}; v2 adds an optional `scale`, nothing to transform,
# so v1 has no model; v3 adds `weight_kg`, which v1 and v2 events do not carry but their
# `weight_lb` gives: v2 keeps its model for the upcaster that converts it.

POUND_KG = 0.45359237


class ParcelWeighedV2(IntegrationEvent):
    parcel_id: UUID
    weight_lb: float
    scale: str = "unknown"


class ParcelWeighed(IntegrationEvent):
    parcel_id: UUID
    weight_lb: float
    scale: str = "unknown"
    weight_kg: float | None = Field(default=None, description="Since v3; from weight_lb before.")


def parcel_weighed_v2_to_v3(old: ParcelWeighedV2) -> ParcelWeighed:
    return ParcelWeighed(**old.model_dump(), weight_kg=round(old.weight_lb * POUND_KG, 3))


class ParcelLabelledV1(IntegrationEvent):
    parcel_id: UUID


class ParcelLabelled(IntegrationEvent):
    parcel_id: UUID
    label: str = ""


@pytest.fixture
def scratch_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry as it is, on copies that the test may register into: nothing it adds is
    left behind for the gate, the docs or the next test."""
    for name in ("_REGISTRY", "_BY_MODEL", "_CURRENT", "_UPCASTERS", "_RULES"):
        monkeypatch.setattr(contracts, name, dict(getattr(contracts, name)))


@pytest.fixture
def parcel_weighed(scratch_catalog: None) -> None:
    on = integration_event
    on(topic="parcels", aggregate_type="parcel", name="ParcelWeighed", version=2)(ParcelWeighedV2)
    on(topic="parcels", aggregate_type="parcel", version=3)(ParcelWeighed)
    upcaster(parcel_weighed_v2_to_v3)
    contracts.check_upcasters()


PARCEL_ID = uuid4()


def test_an_upcaster_transforms_the_data_of_an_older_version_into_the_current_model(
    parcel_weighed: None,
) -> None:
    raw_v2 = {"parcel_id": str(PARCEL_ID), "weight_lb": 10, "scale": "dock-3"}
    decoded = decode_payload("ParcelWeighed", 2, raw_v2)
    assert decoded == ParcelWeighed(
        parcel_id=PARCEL_ID, weight_lb=10, scale="dock-3", weight_kg=4.536
    )


def test_a_version_without_a_model_is_read_by_the_next_model_up_then_upcast(
    parcel_weighed: None,
) -> None:
    raw_v1 = {"parcel_id": str(PARCEL_ID), "weight_lb": 2.5}
    decoded = decode_payload("ParcelWeighed", 1, raw_v1)
    assert decoded == ParcelWeighed(parcel_id=PARCEL_ID, weight_lb=2.5, weight_kg=1.134)


def test_the_current_version_is_read_as_written(parcel_weighed: None) -> None:
    event = ParcelWeighed(parcel_id=PARCEL_ID, weight_lb=1, weight_kg=0.5)
    assert decode_payload("ParcelWeighed", 3, event.model_dump(mode="json")) == event


def test_a_handler_for_an_old_version_is_refused(parcel_weighed: None) -> None:
    with pytest.raises(ValueError, match="handlers take the current version, v3"):
        Router[InMemoryUnitOfWork]().subscriber(ParcelWeighedV2)


def test_an_upcaster_must_go_to_the_next_version_of_its_event(parcel_weighed: None) -> None:
    def skips(old: ParcelWeighedV2) -> ParcelWeighedV2:
        return old

    with pytest.raises(ValueError, match="from one version of an event to the next"):
        upcaster(skips)


def test_an_older_model_without_an_upcaster_is_refused(scratch_catalog: None) -> None:
    on = integration_event
    on(topic="parcels", aggregate_type="parcel", name="ParcelLabelled")(ParcelLabelledV1)
    on(topic="parcels", aggregate_type="parcel", version=2)(ParcelLabelled)
    with pytest.raises(ValueError, match="ParcelLabelled v1 has a model but no upcaster"):
        contracts.check_upcasters()


def test_the_topic_rules_say_which_directions_they_check() -> None:
    assert Compatibility.FULL_TRANSITIVE.backward
    assert Compatibility.FULL_TRANSITIVE.forward
    assert Compatibility.FULL_TRANSITIVE.transitive
    assert not Compatibility.FULL.transitive
    assert Compatibility.BACKWARD.backward
    assert not Compatibility.BACKWARD.forward
    assert Compatibility.FORWARD_TRANSITIVE.forward
    assert not Compatibility.NONE.backward
