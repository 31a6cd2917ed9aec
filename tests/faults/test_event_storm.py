"""The event storm, with debounce on (one event per burst, even across a SIGKILL in the
quiet period) and off by its pitfall mode ``PITFALL_NO_DEBOUNCE`` (one event per edit).

Real PostgreSQL and Kafka; the burst runs in a process that SIGKILLs itself once its edits
are committed (failpoint ``burst.quiet_period``), then a new process emits and relays."""

from __future__ import annotations

import signal
from uuid import uuid4

import pytest

from shared.testing.infra import end_offsets, records_keyed
from tests.faults.conftest import Side, Workers
from tests.faults.what_happened import Report, count

KILLED = -signal.SIGKILL
EDITS = 200


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "pitfall"])
async def test_a_burst_of_address_edits_killed_in_its_quiet_period_crosses_kafka_once(
    producer_side: Side, workers: Workers, report: Report, protected: bool
) -> None:
    order_id = str(uuid4())
    since = await end_offsets("orders")
    env = {"DEBOUNCE_QUIET_SECONDS": "3.0"}
    if not protected:
        env["PITFALL_NO_DEBOUNCE"] = "true"
    burst = workers.run(
        producer_side, "burst", str(EDITS), order_id, FAILPOINTS="burst.quiet_period", **env
    )
    assert burst == KILLED
    workers.start(producer_side, "burst", "0", order_id, **env)  # the restart
    envelopes = await records_keyed(
        "orders", order_id, since, settle=4.0, done=lambda f: len(f) >= (1 if protected else EDITS)
    )
    lines = [e["payload"]["shipping_address"]["line1"] for e in envelopes]
    last = f", ending with the address {lines[-1]!r}" if lines else ""
    report(
        f"event storms: a burst of {EDITS} address edits, killed in its quiet period",
        env,
        f"after the restart {count(len(lines), 'event')} crossed Kafka{last}",
    )
    if protected:
        assert lines == [f"street {EDITS}"]  # one event, the final address, after the restart
    else:
        assert len(lines) == EDITS  # the storm: every edit crossed Kafka
        assert lines[-1] == f"street {EDITS}"
