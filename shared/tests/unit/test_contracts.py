"""Reading every version: older ones upcast to the current model, newer ones read by the
tolerant reader where the topic's rule promises it, the rest refused with the reason."""

from __future__ import annotations

from uuid import uuid4

import pytest

from shared import contracts
from shared.consuming.routing import Router
from shared.contracts import (
    Compatibility,
    IntegrationEvent,
    InvalidPayloadError,
    UnknownEventError,
    current,
    decode_payload,
    lookup,
    registered,
    spec_of,
    upcast,
)
from shared.contracts.catalog import (
    InventoryRejected,
    InventoryRejectedV1,
    ShipmentDispatchedV1,
    Shortfall,
)

ORDER_ID = uuid4()

# One old event per upcaster, as an old producer wrote it.
OLD_EVENTS: list[IntegrationEvent] = [
    InventoryRejectedV1(order_id=ORDER_ID, reason="B: 2 wanted"),
    ShipmentDispatchedV1(order_id=ORDER_ID, shipment_id=uuid4()),
]


def test_every_upcaster_has_an_old_event_to_test_it_with() -> None:
    old_versions = {
        (s.event_type, s.schema_version) for s in registered() if current(s.event_type) is not s
    }
    tested = {(spec_of(e).event_type, spec_of(e).schema_version) for e in OLD_EVENTS}
    assert tested == old_versions


@pytest.mark.parametrize("old", OLD_EVENTS, ids=lambda e: type(e).__name__)
def test_an_upcast_event_reads_back_as_the_old_one_unchanged(old: IntegrationEvent) -> None:
    new = upcast(old)
    assert type(new) is current(spec_of(old).event_type).model
    # what a reader of the old version makes of the new one: the same event
    assert type(old).model_validate(new.model_dump(mode="json")) == old


def test_a_v1_payload_decodes_as_the_current_model() -> None:
    raw = {"order_id": str(ORDER_ID), "reason": "B: 2 wanted, 1 available"}
    decoded = decode_payload("InventoryRejected", 1, raw)
    assert decoded == InventoryRejected(order_id=ORDER_ID, reason="B: 2 wanted, 1 available")


def test_a_v2_payload_decodes_with_its_shortfalls() -> None:
    event = InventoryRejected(
        order_id=ORDER_ID, reason="r", shortfalls=(Shortfall(sku="B", wanted=2, available=1),)
    )
    assert decode_payload("InventoryRejected", 2, event.model_dump(mode="json")) == event


def test_a_v1_payload_that_does_not_validate_is_refused() -> None:
    with pytest.raises(InvalidPayloadError, match="InventoryRejected v1"):
        decode_payload("InventoryRejected", 1, {"order_id": str(ORDER_ID)})


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


def test_the_current_version_is_what_producers_publish() -> None:
    assert spec_of(InventoryRejected(order_id=ORDER_ID, reason="r")).schema_version == 2
    assert lookup("InventoryRejected", 1).model is InventoryRejectedV1


def test_a_handler_for_an_old_version_is_refused() -> None:
    with pytest.raises(ValueError, match="handlers take the current version, v2"):
        Router[object]().subscriber(InventoryRejectedV1)  # type: ignore[type-var]


def test_an_upcaster_must_go_to_the_next_version_of_its_event() -> None:
    def skips(old: InventoryRejectedV1) -> InventoryRejectedV1:
        return old

    with pytest.raises(ValueError, match="from one version of an event to the next"):
        contracts.upcaster(skips)


def test_the_topic_rules_say_which_directions_they_check() -> None:
    assert Compatibility.FULL_TRANSITIVE.backward
    assert Compatibility.FULL_TRANSITIVE.forward
    assert Compatibility.FULL_TRANSITIVE.transitive
    assert not Compatibility.FULL.transitive
    assert Compatibility.BACKWARD.backward
    assert not Compatibility.BACKWARD.forward
    assert Compatibility.FORWARD_TRANSITIVE.forward
    assert not Compatibility.NONE.backward
