"""The launcher's optional components (Toxiproxy, second service instances), its proxy
mode and the ports they add: what it would start, in which order, with which environment.
No process is started here."""

from __future__ import annotations

import contextlib

import pytest

from infra import cli, components, process
from infra.kafka import server_properties
from infra.services import service_env
from infra.settings import (
    COMPONENTS,
    INFRA,
    PORT_VARIABLES,
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


def test_kafka_has_a_proxied_listener_advertising_the_proxys_address() -> None:
    resolved = ports()
    settings = dict(
        line.split("=", 1) for line in server_properties(resolved).splitlines() if "=" in line
    )
    listeners = dict(entry.split("://") for entry in settings["listeners"].split(","))
    advertised = dict(entry.split("://") for entry in settings["advertised.listeners"].split(","))
    assert listeners == {
        "PLAINTEXT": "127.0.0.1:9092",
        "CONTROLLER": "127.0.0.1:9093",
        "PROXIED": "127.0.0.1:9094",
    }
    # Clients of the normal listener are unaffected; those of PROXIED come back through
    # Toxiproxy's kafka proxy.
    assert advertised == {"PLAINTEXT": "127.0.0.1:9092", "PROXIED": "127.0.0.1:19092"}
    protocols = dict(
        entry.split(":") for entry in settings["listener.security.protocol.map"].split(",")
    )
    assert protocols == {
        "CONTROLLER": "PLAINTEXT",
        "PLAINTEXT": "PLAINTEXT",
        "PROXIED": "PLAINTEXT",
    }
    assert settings["inter.broker.listener.name"] == "PLAINTEXT"
    assert settings["controller.listener.names"] == "CONTROLLER"


def test_kafka_must_find_its_proxied_port_free_too() -> None:
    kafka = components.REGISTRY["kafka"]
    assert ports().kafka_proxied in kafka.all_ports(ports())


def test_without_names_start_means_the_default_six_only() -> None:
    assert components._in_start_order(COMPONENTS) == [*INFRA, *SERVICES]
    assert COMPONENTS == ("postgres", "kafka", "jaeger", "order", "inventory", "shipping")


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
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"
    assert "toxiproxy" not in components.REGISTRY["inventory"].requires


def test_via_proxy_services_reach_both_through_toxiproxy_and_start_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUITE_VIA_PROXY", "true")
    for name in ("order", "order-2", "shipping"):
        env = service_env(name, ports())
        database = name.removesuffix("-2")
        assert env["DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:15432/{database}"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert components._in_start_order(["order"]) == [*INFRA, "toxiproxy", "order"]
    # What tests use to find the broker stays the direct address.
    assert components.service_env()["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9092"


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
    assert infrastructure == ["toxiproxy", "jaeger", "kafka", "postgres"]


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
