"""The suite's own services, each `python -m <service>` (migrations, then HTTP)."""

from __future__ import annotations

import importlib
import os
import secrets
import sys
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.base import Component, Launch
from infra.jaeger import http_ok
from infra.kafka import bootstrap_servers
from infra.settings import (
    ADMIN_TOKEN_FILE,
    HOST,
    INFRA,
    REPO,
    STATE,
    TOXIPROXY,
    Ports,
    first_instance,
    topic_partitions,
    via_proxy,
)

if TYPE_CHECKING:
    from shared.consuming.routing import Router
    from shared.service.settings import ServiceSettings


def python() -> str:
    """The project's virtualenv interpreter, else the one running the launcher."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def common_env(ports: Ports) -> dict[str, str]:
    """The variables every service gets from the launcher (beyond its own environment)."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers(ports),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{ports.jaeger_otlp_http}",
        "KAFKA_TOPIC_PARTITIONS": str(topic_partitions()),
    }


def admin_token_path(state: Path | None = None) -> Path:
    return (state or STATE) / ADMIN_TOKEN_FILE


def admin_token(state: Path | None = None) -> str:
    """The admin token of the services started from ``state``: ``ADMIN_TOKEN`` when set,
    else the one in ``<state>/admin-token``, generated on first use (random, mode 0600) and
    reused by every later start, so scripts and the dead-letter CLI can read it there."""
    if given := os.environ.get("ADMIN_TOKEN", "").strip():
        return given
    path = admin_token_path(state)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two launchers racing keep one token; 0600 from creation, never wider.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def service_env(name: str, ports: Ports) -> dict[str, str]:
    """The variables the launcher sets for service component ``name`` (``order`` or its
    second instance ``order-2``); they override os.environ.

    A second instance is the same service: the same database, consumer group and outbox
    lease, only its HTTP port (and log) its own. With ``SUITE_VIA_PROXY=true`` the database
    and the brokers are reached through Toxiproxy, by proxies of this process's own (its
    lane), so a fault can hit one instance alone.
    """
    service = first_instance(name)
    database_port, kafka = ports.postgres, bootstrap_servers(ports)
    if via_proxy():  # this process's own lane of proxies
        database_port, kafka = ports.postgres_lane(name), ports.kafka_lane(name)
    env = {
        "ADMIN_TOKEN": admin_token(),
        "HTTP_HOST": HOST,
        "HTTP_PORT": str(ports.of(name)),
        "DATABASE_URL": f"postgresql://postgres@{HOST}:{database_port}/{service}",
        **common_env(ports),
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
    }
    if name != service:
        # One service.name in Jaeger for both; the instance tells their spans apart.
        resource = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
        instance = f"service.instance.id={name}"
        env["OTEL_RESOURCE_ATTRIBUTES"] = f"{resource},{instance}" if resource else instance
    if service == "order":  # the event-flow view reads Jaeger's query API and links to its UI
        jaeger = f"http://{HOST}:{ports.jaeger_ui}"
        env |= {"JAEGER_QUERY_URL": jaeger, "JAEGER_UI_URL": jaeger}
    return env


class Service(Component):
    stop_timeout = 20.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.service = first_instance(name)

    @property
    def requires(self) -> tuple[str, ...]:
        # Read at start time: SUITE_VIA_PROXY may be set just before a restart.
        return (*INFRA, TOXIPROXY) if via_proxy() else INFRA

    def main_port(self, ports: Ports) -> int:
        return ports.of(self.name)

    def launch(self, ports: Ports) -> Launch:
        # The whole environment passes through, so overrides such as
        # DISPATCH_DELAY_SECONDS reach the service; only our keys are forced.
        env = {**os.environ, **service_env(self.name, ports)}
        return Launch(argv=[python(), "-m", self.service], env=env, cwd=Path(REPO))

    def is_ready(self, ports: Ports) -> bool:
        return http_ok(f"http://{HOST}:{ports.of(self.name)}/ready")


def router_of(service: str) -> Router[Any]:
    """The router the service's composition root registers: ``bootstrap()`` called as the
    tests call it, with the settings' defaults (not the environment's)."""
    bootstrap = importlib.import_module(f"{service}.bootstrap").bootstrap
    from shared.consuming.routing import Router  # noqa: PLC0415  (the launcher needs none)

    router = bootstrap(settings_of(service).model_construct()).router
    if not isinstance(router, Router):
        raise ValueError(f"{service}.bootstrap.bootstrap() registers no Router")
    return router


def settings_of(service: str) -> type[ServiceSettings]:
    """The settings class that the service's ``bootstrap(settings: ...)`` takes."""
    bootstrap = importlib.import_module(f"{service}.bootstrap").bootstrap
    from shared.service.settings import ServiceSettings  # noqa: PLC0415

    hint = typing.get_type_hints(bootstrap).get("settings")
    found = [
        cls
        for cls in (*typing.get_args(hint), hint)
        if isinstance(cls, type) and issubclass(cls, ServiceSettings)
    ]
    if len(found) != 1:
        raise ValueError(f"{service}.bootstrap.bootstrap() takes no ServiceSettings subclass")
    return found[0]
