"""A service that loses PostgreSQL or Kafka says so on /ready and recovers by itself, and
an order placed while Kafka is down is delivered once it is back (that is the outbox). On
a three-node cluster, losing one node is no outage at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from infra import components
from infra.settings import KAFKA_BROKERS, KAFKA_NODES
from shared.testing.infra import eventually
from tests.e2e.conftest import Suite, new_sku
from tests.e2e.flow import order_status_becomes, place, restock


async def readiness(http: httpx.AsyncClient, base: str) -> tuple[int, dict[str, Any]]:
    try:
        response = await http.get(f"{base}/ready", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    body: dict[str, Any] = response.json()
    return response.status_code, body


def probe(
    http: httpx.AsyncClient, base: str
) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    return lambda: readiness(http, base)


@pytest.mark.parametrize("service", ["order", "inventory", "shipping"])
async def test_without_postgres_a_service_is_not_ready_and_recovers_when_it_returns(
    suite: Suite, http: httpx.AsyncClient, service: str
) -> None:
    base = getattr(suite, service)
    components.stop("postgres")
    try:
        _, body = await eventually(lambda: readiness(http, base), lambda r: r[0] == 503, timeout=20)
        assert body["checks"]["database"] is False
        assert (await http.get(f"{base}/health")).status_code == 200  # alive, not ready
    finally:
        components.start("postgres")
    await eventually(lambda: readiness(http, base), lambda r: r[0] == 200, timeout=30)


async def test_without_kafka_services_are_not_ready_and_an_order_placed_meanwhile_ships_after(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 3)
    components.stop(*KAFKA_NODES)  # every node: the whole cluster away
    try:
        for base in (suite.order, suite.inventory, suite.shipping):
            _, body = await eventually(probe(http, base), lambda r: r[0] == 503, timeout=30)
            assert body["checks"] == {"database": True, "kafka": False}
        # The outbox takes the order although the brokers are away.
        accepted = await place(http, suite.order, [{"sku": sku, "quantity": 2}])
    finally:
        components.start(*KAFKA_NODES)
    for base in (suite.order, suite.inventory, suite.shipping):
        await eventually(probe(http, base), lambda r: r[0] == 200, timeout=60)
    order = await order_status_becomes(
        http, suite.order, accepted["order_id"], {"SHIPPED", "REJECTED"}, timeout=90
    )
    assert order["status"] == "SHIPPED"


@pytest.mark.skipif(KAFKA_BROKERS < 3, reason="needs a cluster of three nodes")
async def test_with_the_first_node_of_three_killed_services_stay_ready_and_orders_ship(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 3)
    # The whole cluster restarted first: a client that reconnects while node 1 alone is up
    # learns of node 1 only, and without re-bootstrapping (shared.kafka.rebootstrapping)
    # asks only it, forever, once it dies (seen: an order PENDING for a minute).
    components.stop(*KAFKA_NODES)
    components.start(*KAFKA_NODES)
    # Node 1 leads a third of the partitions and heads every bootstrap list: its partitions
    # get new leaders among the two in-sync copies left, which still make min.insync.replicas.
    components.kill(KAFKA_NODES[0])
    try:
        accepted = await place(http, suite.order, [{"sku": sku, "quantity": 2}])
        order = await order_status_becomes(
            http, suite.order, accepted["order_id"], {"SHIPPED", "REJECTED"}, timeout=60
        )
        assert order["status"] == "SHIPPED"
        for base in (suite.order, suite.inventory, suite.shipping):
            _, body = await eventually(probe(http, base), lambda r: r[0] == 200, timeout=30)
            assert body["checks"] == {"database": True, "kafka": True}
    finally:
        components.start(KAFKA_NODES[0])  # returns once every partition is in sync again
