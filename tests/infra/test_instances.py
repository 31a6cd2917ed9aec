"""The launcher's optional components (Toxiproxy, second service instances), its proxy
mode and the ports they add: what it would start, in which order, with which environment.
No process is started here."""

from __future__ import annotations

import contextlib

import pytest

from infra import cli, components, process
from infra.kafka import Replication, lane_listener, replication, server_properties
from infra.services import service_env
from infra.settings import (
    COMPONENTS,
    HOST,
    INFRA,
    KAFKA_BROKERS,
    KAFKA_NODES,
    PORT_VARIABLES,
    PROXY_LANES,
    SECOND_INSTANCES,
    SERVICES,
    STAGES,
    InfraError,
    ports,
    via_proxy,
)

NEW_PORTS = {
    "TOXIPROXY_PORT": 8474,
    "POSTGRES_PROXY_PORT": 15432,
    "KAFKA_PROXY_PORT": 19092,
    "KAFKA_PROXIED_PORT": 9094,
    "ORDER_2_PORT": 8011,
    "INVENTORY_2_PORT": 8012,
    "SHIPPING_2_PORT": 8013,
}


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The defaults, whatever the environment of the test run says.
    variables = [variable for variable, _ in PORT_VARIABLES.values()]
    for variable in (*variables, "SUITE_VIA_PROXY", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ADMIN_TOKEN", "test-token")  # no token file written by service_env


def test_the_new_ports_have_their_defaults_and_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = components.service_env()
    assert {variable: int(env[variable]) for variable in NEW_PORTS} == NEW_PORTS
    monkeypatch.setenv("ORDER_2_PORT", "18011")
    assert ports().order_2 == 18011
    assert ports().of("order-2") == 18011
    assert ports().of("order") == ports().order


@pytest.mark.parametrize(
    ("variable", "clash"),
    [
        ("KAFKA_PROXY_PORT", "KAFKA_PORT"),
        ("KAFKA_PROXIED_PORT", "KAFKA_PORT"),
        ("POSTGRES_PROXY_PORT", "POSTGRES_PORT"),
        ("TOXIPROXY_PORT", "ORDER_PORT"),
        ("SHIPPING_2_PORT", "SHIPPING_PORT"),
    ],
)
def test_a_new_port_that_collides_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, variable: str, clash: str
) -> None:
    taken = components.service_env()[clash]
    monkeypatch.setenv(variable, taken)
    with pytest.raises(InfraError) as refused:
        ports()
    assert variable in str(refused.value)
    assert clash in str(refused.value)


def _properties(node: int) -> dict[str, str]:
    text = server_properties(node, ports())
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _listeners(value: str) -> dict[str, str]:
    return dict(entry.split("://") for entry in value.split(","))


def test_each_kafka_node_has_a_listener_per_lane_advertising_that_lanes_proxy() -> None:
    for node in range(1, KAFKA_BROKERS + 1):
        own = ports().kafka_node(node)
        settings = _properties(node)
        listeners = _listeners(settings["listeners"])
        advertised = _listeners(settings["advertised.listeners"])
        assert listeners.pop("PLAINTEXT") == advertised.pop("PLAINTEXT") == f"{HOST}:{own.client}"
        assert listeners.pop("CONTROLLER") == advertised.pop("CONTROLLER")
        # Clients of PLAINTEXT are unaffected; a service process bootstrapping through its
        # lane's proxies is sent back through them for every node.
        assert listeners == {
            lane_listener(lane): f"{HOST}:{own.lanes[i]}" for i, lane in enumerate(PROXY_LANES)
        }
        assert advertised == {
            lane_listener(lane): f"{HOST}:{own.proxies[i]}" for i, lane in enumerate(PROXY_LANES)
        }
        assert settings["node.id"] == str(node)
        assert settings["inter.broker.listener.name"] == "PLAINTEXT"
        assert settings["controller.listener.names"] == "CONTROLLER"


def test_node_ports_step_by_ten_from_the_first_nodes() -> None:
    second = ports().kafka_node(2)
    assert (second.client, second.controller) == (9102, 9103)
    assert second.lanes == (9104, 9105, 9106, 9107, 9108, 9109)
    assert second.proxies[0] == 19102
    assert ports().of("kafka-2") == 9102


def test_every_node_lists_the_whole_controller_quorum_and_replicates_three_ways() -> None:
    settings = _properties(1)
    quorum = settings["controller.quorum.bootstrap.servers"].split(",")
    assert quorum == [
        f"{HOST}:{ports().kafka_node(n).controller}" for n in range(1, KAFKA_BROKERS + 1)
    ]
    copies = replication()
    assert settings["default.replication.factor"] == str(copies.factor)
    assert settings["offsets.topic.replication.factor"] == str(copies.factor)
    assert settings["min.insync.replicas"] == str(copies.min_insync)
    assert settings["unclean.leader.election.enable"] == "false"


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)]
)
def test_three_copies_two_in_sync_once_there_are_three_brokers(
    brokers: int, factor: int, min_insync: int
) -> None:
    assert replication(brokers) == Replication(factor, min_insync)


def test_a_kafka_node_must_find_its_lane_ports_free_too() -> None:
    kafka = components.REGISTRY["kafka"]
    assert set(ports().kafka_node(1).lanes) <= set(kafka.all_ports(ports()))


def test_kafka_nodes_are_components_of_their_own() -> None:
    assert ("kafka", *(f"kafka-{n}" for n in range(2, KAFKA_BROKERS + 1))) == KAFKA_NODES
    assert [components.REGISTRY[name].main_port(ports()) for name in KAFKA_NODES] == [
        ports().kafka_node(n).client for n in range(1, KAFKA_BROKERS + 1)
    ]


def test_without_names_start_means_the_default_set_only() -> None:
    assert components._in_start_order(COMPONENTS) == [*INFRA, *SERVICES]
    assert ("postgres", *KAFKA_NODES, "jaeger", "order", "inventory", "shipping") == COMPONENTS


def test_an_optional_component_starts_with_what_it_needs_and_nothing_more() -> None:
    assert components._in_start_order(["toxiproxy"]) == ["toxiproxy"]
    assert components._in_start_order(["order-2"]) == [*INFRA, "order-2"]


def test_a_second_instance_launches_after_every_first_one() -> None:
    # Two instances never run a fresh database's migrations at once.
    stage_of = {name: index for index, stage in enumerate(STAGES) for name in stage}
    for second in SECOND_INSTANCES:
        assert stage_of[second] > stage_of[second.removesuffix("-2")]
    assert stage_of["toxiproxy"] < stage_of["order"]


def test_a_second_instance_is_the_same_service_on_its_own_port() -> None:
    resolved = ports()
    for service in SERVICES:
        first, second = service_env(service, resolved), service_env(f"{service}-2", resolved)
        assert second["HTTP_PORT"] == str(resolved.of(f"{service}-2"))
        assert second.pop("OTEL_RESOURCE_ATTRIBUTES") == f"service.instance.id={service}-2"
        assert {**second, "HTTP_PORT": first["HTTP_PORT"]} == first
        assert components.REGISTRY[f"{service}-2"].launch(resolved).argv[-2:] == ["-m", service]


def test_a_second_instance_keeps_the_resource_attributes_it_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=load")
    env = service_env("shipping-2", ports())
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "deployment.environment=load,service.instance.id=shipping-2"
    )


def test_by_default_services_reach_postgres_and_kafka_directly() -> None:
    env = service_env("inventory", ports())
    assert env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/inventory"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == ports().bootstrap_servers()
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0] == "127.0.0.1:9092"
    assert len(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == KAFKA_BROKERS
    assert "toxiproxy" not in components.REGISTRY["inventory"].requires


def test_via_proxy_services_reach_both_through_toxiproxy_and_start_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUITE_VIA_PROXY", "true")
    # Each process its own lane: proxies of its own to PostgreSQL and to every Kafka node.
    lanes = {"order": 0, "inventory": 1, "order-2": 3}
    for name, lane in lanes.items():
        env = service_env(name, ports())
        database = name.removesuffix("-2")
        assert env["DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{15432 + lane}/{database}"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == ",".join(
            f"127.0.0.1:{19092 + 10 * node + lane}" for node in range(KAFKA_BROKERS)
        )
    assert components._in_start_order(["order"]) == [*INFRA, "toxiproxy", "order"]
    # What tests use to find the brokers stays the direct list.
    assert components.service_env()["KAFKA_BOOTSTRAP_SERVERS"] == ports().bootstrap_servers()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", False), ("false", False), ("0", False), ("true", True), ("TRUE", True), ("1", True)],
)
def test_suite_via_proxy_reads_as_a_boolean(value: str, expected: bool) -> None:
    assert via_proxy({"SUITE_VIA_PROXY": value}) is expected


def test_a_misspelt_suite_via_proxy_is_refused() -> None:
    with pytest.raises(InfraError, match="SUITE_VIA_PROXY"):
        via_proxy({"SUITE_VIA_PROXY": "ture"})


def _pretend_running(monkeypatch: pytest.MonkeyPatch, *running: str) -> None:
    def running_pid(name: str) -> int | None:
        return 4242 if name in running else None

    monkeypatch.setattr(process, "running_pid", running_pid)


def test_a_plain_stop_also_stops_the_optional_components_that_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_running(monkeypatch, "toxiproxy", "order-2")
    # Not the real lock: a launcher busy in this checkout must not hold up a unit test.
    monkeypatch.setattr(process, "state_lock", contextlib.nullcontext)
    stopped: list[str] = []
    monkeypatch.setattr(components, "_stop_one", lambda component: stopped.append(component.name))
    components.stop()
    services, infrastructure = stopped[:4], stopped[4:]
    assert sorted(services) == sorted([*SERVICES, "order-2"])  # stopped together
    assert infrastructure == ["toxiproxy", "jaeger", *reversed(KAFKA_NODES), "postgres"]


def test_status_lists_the_default_set_and_the_optional_components_that_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_running(monkeypatch, "inventory-2")
    assert [item.name for item in components.status()] == [*INFRA, *SERVICES, "inventory-2"]
    assert [item.name for item in components.status("toxiproxy")] == ["toxiproxy"]


def test_pid_and_kill_know_every_optional_component(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_running(monkeypatch, "shipping-2")
    assert components.pid("shipping-2") == 4242
    assert components.pid("toxiproxy") is None
    with pytest.raises(InfraError, match="unknown component 'order-3'"):
        components.pid("order-3")


def test_the_cli_starts_and_kills_optional_components_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []
    monkeypatch.setattr(
        components, "start", lambda *names, infra_only: calls.append(("start", names))
    )
    monkeypatch.setattr(components, "kill", lambda name: calls.append(("kill", (name,))))
    assert cli.main(["start", "toxiproxy", "order-2"]) == 0
    assert cli.main(["kill", "inventory-2"]) == 0
    assert calls == [("start", ("toxiproxy", "order-2")), ("kill", ("inventory-2",))]
