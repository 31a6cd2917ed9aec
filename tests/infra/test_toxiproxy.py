"""Toxiproxy as the launcher starts it, on ports of its own (never the default ones a load
run may be using), in front of the real PostgreSQL and Kafka: the faults the load suite's
nemesis injects really reach a client, and ``reset`` really heals them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from infra import components, process
from infra.settings import HOST, KAFKA_BROKERS, KAFKA_NODES, PROXY_LANES, ports
from infra.toxiproxy import ToxiproxyApi, lane_proxies, proxy_name
from shared.kafka import rebootstrapping

pytestmark = pytest.mark.integration

# The proxies of the order process's lane; the tests use these.
POSTGRES_PROXY = proxy_name("postgres", "order")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def toxiproxy() -> Iterator[ToxiproxyApi]:
    if components.pid("toxiproxy") is not None:
        pytest.skip("a Toxiproxy started from this checkout is running (a load run?)")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOXIPROXY_PORT", str(_free_port()))
        patch.setenv("POSTGRES_PROXY_PORT", str(_free_port()))
        # Kafka advertises the proxy ports it was started with: keep the configured ones.
        if not process.port_free(ports().kafka_proxy):
            pytest.skip(f"port {ports().kafka_proxy} (KAFKA_PROXY_PORT) is taken")
        components.start("toxiproxy")
        try:
            yield ToxiproxyApi()
        finally:
            components.stop("toxiproxy")


@pytest.fixture
def healed(toxiproxy: ToxiproxyApi) -> Iterator[ToxiproxyApi]:
    yield toxiproxy
    toxiproxy.reset()


@pytest.fixture
def database_url(healed: ToxiproxyApi) -> str:
    return f"postgresql://postgres@{HOST}:{ports().postgres_lane('order')}/postgres"


def test_once_ready_it_serves_each_lane_a_proxy_to_postgres_and_to_every_kafka_node(
    toxiproxy: ToxiproxyApi,
) -> None:
    resolved = ports()
    proxies = toxiproxy.proxies()
    assert len(proxies) == len(PROXY_LANES) * (1 + KAFKA_BROKERS)
    order_2 = PROXY_LANES.index("order-2")
    assert proxies["postgres.order-2"]["listen"] == f"{HOST}:{resolved.postgres_proxy + order_2}"
    assert proxies["postgres.order-2"]["upstream"] == f"{HOST}:{resolved.postgres}"
    second = resolved.kafka_node(2)
    assert proxies["kafka-2.order-2"]["listen"] == f"{HOST}:{second.proxies[order_2]}"
    assert proxies["kafka-2.order-2"]["upstream"] == f"{HOST}:{second.lanes[order_2]}"
    assert components.is_running("toxiproxy")
    assert components.pid("toxiproxy") is not None


async def test_a_reset_peer_toxic_cuts_connections_until_reset(
    healed: ToxiproxyApi, database_url: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        healed.add_toxic(POSTGRES_PROXY, "cut", "reset_peer", {"timeout": 0})
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await connection.fetchval("SELECT 1")
        with pytest.raises((asyncpg.PostgresConnectionError, OSError)):
            await asyncpg.connect(database_url, timeout=5)
    finally:
        connection.terminate()
    healed.reset()
    assert healed.proxies()[POSTGRES_PROXY]["toxics"] == []
    healed_connection = await asyncpg.connect(database_url)
    assert await healed_connection.fetchval("SELECT 2") == 2
    await healed_connection.close()


async def test_a_disabled_proxy_refuses_connections_until_enabled(
    healed: ToxiproxyApi, database_url: str
) -> None:
    healed.set_enabled(POSTGRES_PROXY, False)
    assert healed.proxies()[POSTGRES_PROXY]["enabled"] is False
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(database_url, timeout=5)
    healed.set_enabled(POSTGRES_PROXY, True)
    connection = await asyncpg.connect(database_url)
    assert await connection.fetchval("SELECT 3") == 3
    await connection.close()


async def test_a_latency_toxic_slows_every_answer(healed: ToxiproxyApi, database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        healed.add_toxic(POSTGRES_PROXY, "slow", "latency", {"latency": 300})
        started = asyncio.get_running_loop().time()
        await connection.fetchval("SELECT 1")
        assert asyncio.get_running_loop().time() - started >= 0.3
    finally:
        await connection.close()


def test_a_toxic_of_the_same_name_is_replaced_and_removing_it_twice_is_fine(
    healed: ToxiproxyApi,
) -> None:
    healed.add_toxic(POSTGRES_PROXY, "slow", "latency", {"latency": 100})
    healed.add_toxic(POSTGRES_PROXY, "slow", "bandwidth", {"rate": 10}, stream="upstream")
    (toxic,) = healed.proxies()[POSTGRES_PROXY]["toxics"]
    assert (toxic["type"], toxic["stream"], toxic["attributes"]) == (
        "bandwidth",
        "upstream",
        {"rate": 10},
    )
    healed.remove_toxic(POSTGRES_PROXY, "slow")
    healed.remove_toxic(POSTGRES_PROXY, "slow")
    assert healed.proxies()[POSTGRES_PROXY]["toxics"] == []


def test_ensure_proxy_keeps_an_identical_proxy_and_its_toxics(healed: ToxiproxyApi) -> None:
    resolved = ports()
    healed.add_toxic(POSTGRES_PROXY, "slow", "latency", {"latency": 50})
    healed.ensure_proxy(POSTGRES_PROXY, resolved.postgres_proxy, resolved.postgres)
    assert [t["name"] for t in healed.proxies()[POSTGRES_PROXY]["toxics"]] == ["slow"]


def test_starting_it_again_is_a_no_op_that_keeps_the_proxies(toxiproxy: ToxiproxyApi) -> None:
    running = components.pid("toxiproxy")
    components.start("toxiproxy")
    assert components.pid("toxiproxy") == running
    assert set(toxiproxy.proxies()) == {name for name, _, _ in lane_proxies(ports())}


async def test_a_kafka_client_of_one_lane_stays_behind_its_proxies_and_can_be_cut_off_alone(
    healed: ToxiproxyApi,
) -> None:
    resolved = ports()
    lane = PROXY_LANES.index("order-2")
    if not process.port_open(resolved.kafka_node(1).lanes[lane]):
        pytest.skip(
            "Kafka has no lane listeners yet (started before they existed): restart it "
            "(python -m infra stop kafka && make start) to run this test"
        )
    # Metadata only: nothing is written to the suite's topics.
    async with _kafka_client(resolved.kafka_lane("order-2")) as producer:
        brokers = {(broker.host, broker.port) for broker in producer.client.cluster.brokers()}
    every_node = range(1, KAFKA_BROKERS + 1)
    assert brokers == {(HOST, resolved.kafka_node(n).proxies[lane]) for n in every_node}
    for node in KAFKA_NODES:  # order-2 loses Kafka ...
        healed.set_enabled(proxy_name(node, "order-2"), False)
    with pytest.raises(KafkaConnectionError):
        async with _kafka_client(resolved.kafka_lane("order-2")):
            pass
    async with _kafka_client(resolved.kafka_lane("order")):  # ... while order keeps it
        pass
    healed.reset()
    async with _kafka_client(resolved.kafka_lane("order-2")):
        pass


def ports_of(bootstrap: str) -> set[int]:
    return {int(address.rsplit(":", 1)[1]) for address in bootstrap.split(",")}


@contextlib.asynccontextmanager
async def _kafka_client(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


@pytest.mark.parametrize("rebootstraps", [True, False], ids=["rebootstrapping", "plain aiokafka"])
async def test_a_client_whose_every_known_node_is_gone_asks_its_bootstrap_list_again(
    healed: ToxiproxyApi, rebootstraps: bool
) -> None:
    # It bootstraps through lane order-2's proxy to node 1, so it knows every node at its
    # lane-2 proxy; then the whole lane is cut. Its bootstrap list also names node 1 direct.
    resolved = ports()
    first_proxy = resolved.kafka_lane("order-2").split(",")[0]
    bootstrap = f"{first_proxy},{HOST}:{resolved.kafka}"
    lane = {(HOST, port) for port in ports_of(resolved.kafka_lane("order-2"))}
    # Right after the previous test's reset, a proxy may refuse a moment: bootstrap again
    # until the client has come in through the lane.
    for _ in range(50):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        if rebootstraps:
            rebootstrapping(producer.client)
        await producer.start()
        if {(b.host, b.port) for b in producer.client.cluster.brokers()} == lane:
            break
        await producer.stop()
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the client never bootstrapped through lane order-2's proxy")
    try:
        for node in KAFKA_NODES:
            healed.set_enabled(proxy_name(node, "order-2"), False)
        updated = await producer.client.force_metadata_update()
        known = {(broker.host, broker.port) for broker in producer.client.cluster.brokers()}
        direct = {(HOST, resolved.kafka_node(n).client) for n in range(1, KAFKA_BROKERS + 1)}
        # Rebootstrapping, it asked node 1 direct and learned the cluster's direct addresses;
        # plain aiokafka keeps asking the proxies it knows, all gone.
        assert updated is rebootstraps
        assert (known == direct) is rebootstraps
    finally:
        await producer.stop()
