import json
from uuid import uuid4

import pytest

from shared.contracts import UnknownEventError, decode_payload
from shared.contracts.catalog import OrderRejected
from shared.contracts.envelope import Envelope, MalformedEnvelopeError, new_envelope, parse_envelope


def an_envelope(sequence: int = 1) -> Envelope:
    return new_envelope(
        OrderRejected(order_id=uuid4(), reason="out of stock"),
        source="order",
        aggregate_id="agg-1",
        sequence=sequence,
        correlation_id="corr-1",
        causation_id=None,
    )


def test_an_envelope_survives_the_round_trip_through_bytes() -> None:
    envelope = an_envelope()
    assert parse_envelope(envelope.to_bytes()) == envelope
    assert envelope.event_type == "OrderRejected"
    assert envelope.schema_version == 1
    assert envelope.aggregate_type == "order"


def test_the_envelope_has_exactly_the_fields_of_the_contract() -> None:
    assert set(an_envelope().model_dump()) == {
        "event_id", "event_type", "schema_version", "source", "aggregate_type",
        "aggregate_id", "sequence", "occurred_at", "correlation_id", "causation_id", "payload",
    }  # fmt: skip


def test_kafka_headers_name_the_event_and_its_correlation() -> None:
    headers = an_envelope().kafka_headers()
    assert headers == {
        "event_type": "OrderRejected",
        "schema_version": "1",
        "correlation_id": "corr-1",
    }


@pytest.mark.parametrize(
    "value",
    [None, b"", b"not json", b"[]", b'{"event_id": "x"}', b'{"sequence": 0}'],
)
def test_malformed_values_are_refused_with_a_reason(value: bytes | None) -> None:
    with pytest.raises(MalformedEnvelopeError):
        parse_envelope(value)


def test_a_sequence_below_one_is_malformed() -> None:
    raw = an_envelope().model_dump(mode="json")
    raw["sequence"] = 0
    with pytest.raises(MalformedEnvelopeError):
        parse_envelope(json.dumps(raw))


def test_unknown_payload_fields_are_ignored_by_the_tolerant_reader() -> None:
    order_id = uuid4()
    payload = decode_payload(
        "OrderRejected", 1, {"order_id": str(order_id), "reason": "r", "added_later": 42}
    )
    assert payload == OrderRejected(order_id=order_id, reason="r")


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownEventError, match="OrderRefunded"):
        decode_payload("OrderRefunded", 1, {})
