"""The customers' choices, pacing, retries and journal lines, without Locust (unit tier)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from load.customers import (
    ADDRESS_BURST,
    CANCEL_SHARE,
    CANCEL_WITHIN,
    MAX_LINES,
    READ_GAP,
    READ_WITHIN,
    READS,
    RetryPolicy,
    answer,
    correlation_id,
    customer_id,
    expected,
    follow_up,
    idempotency_key,
    journal_entry,
    order_body,
    pacing_wait,
    per_user_rate,
    restocks_closed,
    retryable,
    stock_total,
    user_random,
)

REPO = Path(__file__).resolve().parents[2]
HOT = ["LT-HOT-1", "LT-HOT-2"]
PLENTY = [f"LT-{n}" for n in range(10)]


def test_importing_the_helpers_does_not_patch_the_standard_library_with_gevent() -> None:
    # In a fresh interpreter: another test of the session may have imported gevent.
    probe = "import sys, load.customers; print(sorted({'locust', 'gevent'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


def test_an_order_has_one_to_five_lines_each_sku_once_within_the_api_limits() -> None:
    rng = random.Random(1)
    for _ in range(500):
        body = order_body(rng, "load-t-1", HOT, PLENTY)
        skus = [line["sku"] for line in body["items"]]
        assert 1 <= len(skus) <= MAX_LINES
        assert len(set(skus)) == len(skus)
        assert set(skus) <= {*HOT, *PLENTY}
        assert all(1 <= line["quantity"] <= 3 for line in body["items"])
        assert body["customer_id"] == "load-t-1"
        address = body["shipping_address"]
        assert set(address) == {"line1", "city", "postal_code", "country"}
        assert len(address["country"]) == 2
        assert address["country"].isupper()


def test_hot_skus_come_up_often_though_they_are_few() -> None:
    rng = random.Random(2)
    bodies = [order_body(rng, "c", HOT, PLENTY) for _ in range(1000)]
    with_hot = sum(any(line["sku"] in HOT for line in b["items"]) for b in bodies)
    assert with_hot > 600  # 2 of 12 SKUs, yet most orders touch one


def test_orders_still_come_with_only_hot_or_only_plenty_skus() -> None:
    rng = random.Random(3)
    for hot, plenty in ((HOT, []), ([], PLENTY), (["ONE"], [])):
        body = order_body(rng, "c", hot, plenty)
        assert 1 <= len(body["items"]) <= max(1, len(hot) + len(plenty))


def test_the_same_seed_and_user_make_the_same_choices() -> None:
    first, second, other = user_random(7, 3), user_random(7, 3), user_random(7, 4)
    bodies = [order_body(first, "c", HOT, PLENTY) for _ in range(20)]
    assert bodies == [order_body(second, "c", HOT, PLENTY) for _ in range(20)]
    assert bodies != [order_body(other, "c", HOT, PLENTY) for _ in range(20)]
    assert [follow_up(first) for _ in range(20)] == [follow_up(second) for _ in range(20)]


def test_follow_ups_come_in_the_planned_shares() -> None:
    rng = random.Random(4)
    plans = [follow_up(rng) for _ in range(4000)]
    cancels = [p.cancel_after for p in plans if p.cancel_after is not None]
    assert abs(len(cancels) / len(plans) - CANCEL_SHARE) < 0.03
    assert all(0 <= c <= CANCEL_WITHIN for c in cancels)
    bursts = [p.address_burst for p in plans if p.address_burst]
    assert 0.07 < len(bursts) / len(plans) < 0.13
    assert {len(b) for b in bursts} == set(range(ADDRESS_BURST[0], ADDRESS_BURST[1] + 1))
    assert 0 < sum(p.replay for p in plans) < 0.1 * len(plans)
    assert any(p.idle for p in plans)
    assert not any(p.idle for p in plans if p.replay or p.reads)


def test_a_read_order_is_read_one_to_three_times_one_read_after_the_other() -> None:
    rng = random.Random(5)
    reads = [p.reads for p in (follow_up(rng) for _ in range(2000)) if p.reads]
    assert {len(r) for r in reads} == set(range(READS[0], READS[1] + 1))
    assert all(0 <= r[0] <= READ_WITHIN for r in reads)
    assert all(READ_GAP[0] <= gap <= READ_GAP[1] for r in reads for gap in r[1:])


def test_names_carry_the_runs_tag_and_keys_never_repeat() -> None:
    assert customer_id("ab1", 4) == "load-ab1-4"
    assert correlation_id("ab1").startswith("load-ab1-")
    assert correlation_id("ab1") != correlation_id("ab1")
    assert len({idempotency_key() for _ in range(1000)}) == 1000


def test_the_customers_together_offer_the_runs_rate_and_the_restocker_none() -> None:
    assert per_user_rate(40, 11) == pytest.approx(4.0)  # 10 customers + the restocker
    assert per_user_rate(5, 1) == 5  # never divides by zero customers
    assert per_user_rate(10, 5, fixed=0) == 2


def test_pacing_waits_out_the_rest_of_the_interval_and_never_a_negative_time() -> None:
    assert pacing_wait(2.0, task_started=100.0, now=100.1) == pytest.approx(0.4)
    assert pacing_wait(2.0, task_started=100.0, now=103.0) == 0.0  # overran (retries)
    assert pacing_wait(0.0, task_started=100.0, now=100.0) == 1.0


def test_no_answer_server_errors_and_overload_are_retried_nothing_else() -> None:
    for status in (0, 429, 500, 502, 503, 504):
        assert retryable(status)
    for status in (200, 202, 404, 409, 422):
        assert not retryable(status)


def test_retries_back_off_and_stop_within_the_budget_or_the_attempts() -> None:
    policy = RetryPolicy(attempts=5, budget=60.0, first_backoff=0.25, max_backoff=4.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.again(0, attempt=1, elapsed=0.0)
    assert policy.again(503, attempt=4, elapsed=10.0)
    assert not policy.again(503, attempt=5, elapsed=10.0)  # attempts spent
    assert not policy.again(0, attempt=2, elapsed=59.8)  # the minute is over
    assert not policy.again(202, attempt=1, elapsed=0.0)
    assert not RetryPolicy(attempts=1).again(0, attempt=1, elapsed=0.0)


def test_a_service_down_for_seconds_is_outlasted_by_the_default_policy() -> None:
    policy, elapsed, attempt = RetryPolicy(), 0.0, 1
    while policy.again(0, attempt, elapsed):
        elapsed += policy.backoff(attempt)
        attempt += 1
    assert 45 < elapsed < 60


def test_too_late_to_cancel_or_readdress_is_expected_other_refusals_are_failures() -> None:
    assert expected("cancel", 409)
    assert expected("address", 409)
    assert expected("order", 202)
    assert not expected("order", 409)
    assert not expected("read", 404)
    assert not expected("cancel", 0)
    assert not expected("restock", 503)


def test_a_journal_line_takes_the_order_id_and_stock_total_from_the_answer() -> None:
    placed = journal_entry(
        "order",
        202,
        1.5,
        0.01234567,
        '{"order_id": "o-1", "status": "PENDING"}',
        key="k",
        attempt=3,
    )
    assert (placed.op, placed.status, placed.key, placed.order_id) == ("order", 202, "k", "o-1")
    assert (placed.t, placed.seconds, placed.attempt, placed.total) == (1.5, 0.0123, 3, None)
    assert (placed.state, placed.version, placed.answered_at) == ("PENDING", None, 1.5123)

    lost = journal_entry("order", 0, 2.0, 10.0, key="k", attempt=2)
    assert (lost.status, lost.order_id, lost.attempt) == (0, None, 2)

    cancel = journal_entry("cancel", 409, 3.0, 0.1, '{"error": "conflict"}', order_id="o-1")
    assert cancel.order_id == "o-1"

    restock = journal_entry(
        "restock",
        200,
        4.0,
        0.1,
        '{"sku": "S", "available": 4, "reserved": 2, "shipped": 9}',
        sku="S",
        key="r",
        sent={"quantity": 3},
    )
    assert (restock.sku, restock.key, restock.quantity, restock.total) == ("S", "r", 3, 15)
    assert (restock.state, restock.version) == (None, None)
    failed = journal_entry(
        "restock", 503, 4.0, 0.1, '{"available": 1}', sku="S", sent={"quantity": 3}
    )
    assert (failed.total, failed.quantity) == (None, 3)


def test_a_journal_line_keeps_the_address_sent_and_the_orders_status_and_version() -> None:
    where = {"line1": "2 Rue B", "city": "Lyon", "postal_code": "69001", "country": "FR"}
    moved = journal_entry(
        "address",
        202,
        5.0,
        0.02,
        '{"order_id": "o-1", "status": "CONFIRMED", "version": 4, "shipping_address": {}}',
        order_id="o-1",
        sent=where,
    )
    assert (moved.address, moved.state, moved.version) == (where, "CONFIRMED", 4)
    assert moved.quantity is None

    read = journal_entry(
        "read", 200, 6.0, 0.01, '{"status": "SHIPPED", "version": 5}', order_id="o-1"
    )
    assert (read.order_id, read.state, read.version, read.address) == ("o-1", "SHIPPED", 5, None)

    refused = journal_entry("cancel", 409, 7.0, 0.01, '{"status": "x", "version": 9}', order_id="o")
    assert (refused.state, refused.version) == (None, None)  # only a 2xx answer shows the order


def test_restocks_stop_in_the_last_seconds_of_a_headless_run_only() -> None:
    started, duration = 1000.0, 60.0
    assert not restocks_closed(started + 49.0, started, duration, headless=True)
    assert restocks_closed(started + 50.0, started, duration, headless=True)
    assert not restocks_closed(started + 500.0, started, duration, headless=False)


def test_answers_that_are_not_json_objects_read_as_empty() -> None:
    assert answer("<html>502</html>") == {}
    assert answer("") == {}
    assert answer("[1]") == {}
    assert stock_total({"available": 1}) is None
