"""Following a flow: one trace in Jaeger across the three services, correlation ids on every
log line, the dead-letter queue with replay, and the event-flow view in a real browser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiokafka.partitioner import murmur2
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from infra import components
from shared.service import dlq
from shared.testing.infra import end_offsets, eventually, read_records
from tests.e2e.conftest import ADMIN, Suite, new_sku, restarted_with
from tests.e2e.flow import order_status_becomes, place, restock, stock

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".state" / "screenshots"
PARTITIONS = int(components.service_env()["KAFKA_TOPIC_PARTITIONS"])


def partition_of(order_id: str) -> int:
    return int(murmur2(order_id.encode()) & 0x7FFFFFFF) % PARTITIONS


async def shipped_flow(suite: Suite, http: httpx.AsyncClient, correlation_id: str) -> str:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 5)
    accepted = await place(
        http, suite.order, [{"sku": sku, "quantity": 1}], correlation_id=correlation_id
    )
    await order_status_becomes(http, suite.order, accepted["order_id"], {"SHIPPED"})
    order_id: str = accepted["order_id"]
    return order_id


async def test_one_trace_in_jaeger_spans_the_request_and_every_hop_in_all_three_services(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    correlation_id = f"trace-{uuid4()}"
    await shipped_flow(suite, http, correlation_id)

    async def traces() -> list[dict[str, Any]]:
        response = await http.get(
            f"{suite.jaeger}/api/traces",
            params={"service": "order-service", "tag": f"correlation_id:{correlation_id}"},
        )
        data: list[dict[str, Any]] = response.json().get("data") or []
        return data

    def operations(trace: dict[str, Any]) -> set[str]:
        return {s["operationName"] for s in trace["spans"]}

    wanted = {
        "POST /orders",
        "publish orders",
        "process OrderPlaced",
        "publish inventory",
        "process InventoryReserved",
        "process OrderConfirmed",
        "dispatch shipment",
        "publish shipping",
        "process ShipmentDispatched",
    }
    found = await eventually(
        traces, lambda ts: any(wanted <= operations(t) for t in ts), timeout=30, interval=1
    )
    (trace,) = [t for t in found if wanted <= operations(t)]
    services = {p["serviceName"] for p in trace["processes"].values()}
    assert services == {"order-service", "inventory-service", "shipping-service"}
    for span in trace["spans"]:
        tags = {t["key"]: t["value"] for t in span["tags"]}
        assert tags.get("correlation_id") == correlation_id, span["operationName"]


def log_lines(service: str) -> list[dict[str, Any]]:
    lines = []
    for line in components.log_path(service).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


async def test_every_log_line_of_a_flow_carries_its_correlation_id(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    correlation_id = f"logs-{uuid4()}"
    order_id = await shipped_flow(suite, http, correlation_id)
    await eventually(
        lambda: stock_lines(order_id), lambda by: all(by.values()), timeout=15, interval=0.5
    )
    by_service = await stock_lines(order_id)
    for service, lines in by_service.items():
        assert lines, f"no log line of {service} about order {order_id}"
        assert {line.get("correlation_id") for line in lines} == {correlation_id}, service
        assert all(line.get("trace_id") for line in lines), service


async def stock_lines(order_id: str) -> dict[str, list[dict[str, Any]]]:
    return {
        service: [line for line in log_lines(service) if line.get("aggregate_id") == order_id]
        for service in components.SERVICES
    }


# --- dead letters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Poisoned:
    correlation_id: str
    order_id: str
    sku: str
    neighbour_id: str  # a good order on the same partition, placed after the poison
    dlq_since: dict  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def buggy_inventory(suite: Suite) -> Iterator[None]:
    """Inventory runs with a handler bug for flows whose correlation id starts with
    ``poison-``; restarting it (as the replay test does) "deploys the fix"."""
    with restarted_with(
        "inventory", FAILPOINTS="handler.raise", FAILPOINT_CORRELATION_PREFIX="poison-"
    ):
        yield


@pytest.fixture(scope="module")
async def poisoned(buggy_inventory: None, suite: Suite) -> AsyncIterator[Poisoned]:
    async with httpx.AsyncClient(timeout=10) as http:
        sku, other = new_sku(), new_sku()
        await restock(http, suite.inventory, sku, 10)
        await restock(http, suite.inventory, other, 100)
        dlq_since = await end_offsets("inventory.dlq")
        correlation_id = f"poison-{uuid4()}"
        poison = await place(
            http, suite.order, [{"sku": sku, "quantity": 2}], correlation_id=correlation_id
        )
        for _ in range(60):
            good = await place(http, suite.order, [{"sku": other, "quantity": 1}])
            if partition_of(good["order_id"]) == partition_of(poison["order_id"]):
                break
        else:
            pytest.fail("no good order landed on the poison's partition")
        yield Poisoned(correlation_id, poison["order_id"], sku, good["order_id"], dlq_since)


async def dead_letters(http: httpx.AsyncClient, suite: Suite, **params: str) -> dict[str, Any]:
    response = await http.get(f"{suite.inventory}/admin/dlq", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def dead_letters_of(
    http: httpx.AsyncClient, suite: Suite, poisoned: Poisoned
) -> dict[str, Any]:
    """The dead-letter page of the poisoned flow, once its one letter is there (inventory
    retries the event a few times first)."""
    return await eventually(
        lambda: dead_letters(http, suite, correlation_id=poisoned.correlation_id),
        lambda body: len(body["items"]) == 1,
        timeout=30,
    )


async def test_a_poison_event_is_dead_lettered_with_its_reason_and_the_partition_keeps_flowing(
    suite: Suite, http: httpx.AsyncClient, poisoned: Poisoned
) -> None:
    page = await dead_letters_of(http, suite, poisoned)
    (letter,) = page["items"]
    assert letter["event_type"] == "OrderPlaced"
    assert letter["topic"] == "orders"
    assert letter["key"] == poisoned.order_id
    assert letter["attempts"] == 5
    assert "simulated handler bug" in letter["error"]
    assert letter["replayed_at"] is None
    assert page["depth"] >= 1

    # The next good event on the same partition went through.
    await order_status_becomes(http, suite.order, poisoned.neighbour_id, {"SHIPPED"})
    order = (await http.get(f"{suite.order}/orders/{poisoned.order_id}")).json()
    assert order["status"] == "PENDING"

    # On the dead-letter topic, with the metadata headers.
    records = await read_records(
        "inventory.dlq",
        poisoned.dlq_since,
        lambda rs: any(r.key.decode() == poisoned.order_id for r in rs),  # type: ignore[attr-defined]
    )
    (record,) = [r for r in records if r.key.decode() == poisoned.order_id]  # type: ignore[attr-defined]
    headers = {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]
    assert headers["dlq.original_topic"] == "orders"
    assert headers["dlq.consumer"] == "inventory"
    assert headers["dlq.attempts"] == "5"
    assert int(headers["dlq.original_offset"]) == letter["offset"]
    assert headers["correlation_id"] == poisoned.correlation_id

    async def metrics() -> str:
        return (await http.get(f"{suite.inventory}/metrics")).text

    text = await eventually(metrics, lambda t: 'dlq_depth{service="inventory"}' in t, timeout=15)
    depth = [
        line for line in text.splitlines() if line.startswith('dlq_depth{service="inventory"}')
    ]
    assert float(depth[0].split()[-1]) >= 1
    assert 'consumer_dead_letters_total{service="inventory",topic="orders"}' in text


async def test_the_admin_api_refuses_a_missing_or_wrong_token(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    url = f"{suite.inventory}/admin/dlq"
    assert (await http.get(url)).status_code == 401
    assert (await http.get(url, headers={"X-Admin-Token": "nope"})).status_code == 403
    assert (await http.get(url, headers={"Authorization": "Bearer nope"})).status_code == 403
    assert (await http.get(url, headers=ADMIN)).status_code == 200  # the right one passes


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900",
    ):  # fmt: skip
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def open_flow(driver: webdriver.Chrome, suite: Suite, q: str) -> None:
    driver.get(f"{suite.order}/flow?q={q}")


async def test_the_flow_view_shows_the_dead_lettered_step_of_a_poisoned_flow(
    suite: Suite, http: httpx.AsyncClient, poisoned: Poisoned
) -> None:
    await dead_letters_of(http, suite, poisoned)
    driver = browser()
    try:
        open_flow(driver, suite, poisoned.correlation_id)
        marker = WebDriverWait(driver, 20, poll_frequency=1).until(
            lambda d: _reloaded_find(d, suite, poisoned.correlation_id, "dead-lettered")
        )
        assert "inventory-service" in marker.text
        assert "OrderPlaced" in marker.text
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.dead_lettered")
        assert rows
        assert "simulated handler bug" in rows[0].text
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "flow-view-dead-lettered.png"))
    finally:
        driver.quit()


def _reloaded_find(driver: webdriver.Chrome, suite: Suite, q: str, element_id: str) -> Any:
    """The element, or False after reloading the page (spans reach Jaeger in batches)."""
    found = driver.find_elements(By.ID, element_id)
    if found:
        return found[0]
    open_flow(driver, suite, q)
    return False


@dataclass(frozen=True)
class Replayed:
    letter_id: int
    status_code: int
    text: str


@pytest.fixture(scope="module")
async def replayed(poisoned: Poisoned, suite: Suite) -> Replayed:
    """The poisoned flow's dead letter, replayed once after the fix is deployed, for every
    test that needs a replayed letter, whichever runs first or alone."""
    async with httpx.AsyncClient(timeout=10) as http:
        (letter,) = (await dead_letters_of(http, suite, poisoned))["items"]
        # "Deploy the fix": the failpoint was only in the environment of the previous start.
        components.restart("inventory")
        first = await http.post(f"{suite.inventory}/admin/dlq/{letter['id']}/replay", headers=ADMIN)
    return Replayed(letter["id"], first.status_code, first.text)


async def test_a_replay_after_the_fix_applies_the_event_exactly_once(
    suite: Suite, http: httpx.AsyncClient, poisoned: Poisoned, replayed: Replayed
) -> None:
    assert replayed.status_code == 202, replayed.text
    again = await http.post(
        f"{suite.inventory}/admin/dlq/{replayed.letter_id}/replay", headers=ADMIN
    )
    assert again.status_code == 409
    assert "was replayed at" in again.json()["message"]

    await order_status_becomes(http, suite.order, poisoned.order_id, {"SHIPPED"})
    await eventually(
        lambda: stock(http, suite.inventory, poisoned.sku),
        lambda s: s["shipped"] == 2,
        timeout=20,
    )
    assert await stock(http, suite.inventory, poisoned.sku) == {
        "sku": poisoned.sku, "available": 8, "reserved": 0, "shipped": 2,
    }  # fmt: skip
    pending = await dead_letters(http, suite, pending="true")
    assert all(item["id"] != replayed.letter_id for item in pending["items"])


async def test_the_dlq_cli_lists_and_refuses_a_second_replay(
    suite: Suite, poisoned: Poisoned, replayed: Replayed, capsys: pytest.CaptureFixture[str]
) -> None:
    assert replayed.status_code == 202, replayed.text
    listed = await asyncio.to_thread(
        dlq.main,
        [
            "list",
            "inventory",
            "--url",
            suite.inventory,
            "--correlation-id",
            poisoned.correlation_id,
        ],
    )
    (letter,) = json.loads(capsys.readouterr().out)["items"]
    assert listed == 0
    assert letter["id"] == replayed.letter_id
    assert letter["replayed_at"] is not None
    refused = await asyncio.to_thread(
        dlq.main, ["replay", "inventory", str(letter["id"]), "--url", suite.inventory]
    )
    assert refused == 1
    assert "was replayed at" in capsys.readouterr().out


async def test_the_flow_view_shows_the_whole_chain_of_a_shipped_order(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    order_id = await shipped_flow(suite, http, f"view-{uuid4()}")
    driver = browser()
    try:
        open_flow(driver, suite, order_id)

        def chain_complete(d: webdriver.Chrome) -> bool:
            services = {
                r.get_attribute("data-service") for r in d.find_elements(By.CSS_SELECTOR, "tr.step")
            }
            if {"order-service", "inventory-service", "shipping-service"} <= services and any(
                "ShipmentDispatched" in r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.step")
            ):
                return True
            open_flow(d, suite, order_id)
            return False

        WebDriverWait(driver, 20, poll_frequency=1).until(chain_complete)
        assert driver.find_element(By.ID, "order-status").text == "SHIPPED"
        link = driver.find_element(By.LINK_TEXT, "Jaeger").get_attribute("href")
        assert link is not None
        assert link.startswith(f"{suite.jaeger}/trace/")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "flow-view.png"))
    finally:
        driver.quit()
