"""Toxiproxy: TCP proxies in front of PostgreSQL and each Kafka node whose faults (latency,
cut connections, a partition) the load suite's nemesis turns on and off over its HTTP API.

Optional: started by name (``python -m infra start toxiproxy``), never by a plain
``start``. Once ready it serves, on 127.0.0.1, one *lane* of proxies per service process
(``order``, ``inventory``, ``shipping``, ``order-2``, ...; lane i at the base port + i):

- ``postgres.<lane>``: ``POSTGRES_PROXY_PORT`` + i (15432, 15433, ...) -> PostgreSQL;
- ``<node>.<lane>`` for every Kafka node (``kafka.order``, ``kafka-2.order``, ...): node n's
  ``KAFKA_PROXY_PORT`` + i -> that node's listener for the lane, which advertises the
  proxy's address, so a client that bootstraps through its proxies keeps talking through
  them.

So a fault can hit one service process alone (every proxy of its lane), one Kafka node for
everyone (that node's proxy in every lane), or everything. With ``SUITE_VIA_PROXY=true`` the
launcher points each service process at its lane (see :mod:`infra.services`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from infra.base import Component, Launch
from infra.install import TOXIPROXY_BIN, install
from infra.jaeger import http_ok
from infra.settings import (
    HOST,
    KAFKA_BROKERS,
    PROXY_LANES,
    TOXIPROXY,
    InfraError,
    Ports,
    kafka_node_name,
    ports,
)

POSTGRES_PROXY = "postgres"
REQUEST_TIMEOUT = 5.0


def proxy_name(target: str, lane: str) -> str:
    """The proxy to ``target`` (``postgres`` or a Kafka node) for service process ``lane``."""
    return f"{target}.{lane}"


def lane_proxies(resolved: Ports) -> list[tuple[str, int, int]]:
    """(name, listen port, upstream port) of every proxy."""
    proxies = []
    for index, lane in enumerate(PROXY_LANES):
        proxies.append(
            (proxy_name(POSTGRES_PROXY, lane), resolved.postgres_lane(lane), resolved.postgres)
        )
        for node in range(1, KAFKA_BROKERS + 1):
            ports = resolved.kafka_node(node)
            proxies.append(
                (proxy_name(kafka_node_name(node), lane), ports.proxies[index], ports.lanes[index])
            )
    return proxies


class Toxiproxy(Component):
    name = TOXIPROXY
    stop_timeout = 10.0

    def main_port(self, ports: Ports) -> int:
        return ports.toxiproxy

    def all_ports(self, ports: Ports) -> tuple[int, ...]:
        return (ports.toxiproxy, *(listen for _, listen, _ in lane_proxies(ports)))

    def install(self) -> None:
        install([TOXIPROXY])

    def launch(self, ports: Ports) -> Launch:
        argv = [str(TOXIPROXY_BIN), "-host", HOST, "-port", str(ports.toxiproxy)]
        return Launch(argv=argv, env=dict(os.environ))

    def is_ready(self, ports: Ports) -> bool:
        return http_ok(f"http://{HOST}:{ports.toxiproxy}/version")

    def after_ready(self, ports: Ports) -> None:
        ToxiproxyApi(ports.toxiproxy).ensure_proxies(lane_proxies(ports))


class ToxiproxyApi:
    """A client of Toxiproxy's HTTP API (all proxies on 127.0.0.1). Every failure raises
    :class:`InfraError` with Toxiproxy's own message."""

    def __init__(self, port: int | None = None) -> None:
        self.port = ports().toxiproxy if port is None else port
        self._base = f"http://{HOST}:{self.port}"

    def ensure_proxy(self, name: str, listen: int, upstream: int) -> None:
        """Proxy ``listen`` to ``upstream``; idempotent (see :meth:`ensure_proxies`)."""
        self.ensure_proxies([(name, listen, upstream)])

    def ensure_proxies(self, proxies: list[tuple[str, int, int]]) -> None:
        """Proxy each (name, listen, upstream); idempotent. An existing proxy of that name and
        those ports is kept as it is (its toxics, enabled or not); one with other ports is
        replaced."""
        body = [
            {"name": name, "listen": f"{HOST}:{listen}", "upstream": f"{HOST}:{upstream}"}
            for name, listen, upstream in proxies
        ]
        # /populate creates or replaces by name, leaving an identical proxy untouched.
        self._request("POST", "/populate", body)

    def add_toxic(
        self,
        proxy: str,
        name: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> None:
        """Add toxic ``name`` of type ``kind`` (``latency``, ``reset_peer``, ``timeout``,
        ``bandwidth``, ``slow_close``, ``slicer``, ``limit_data``) to ``proxy``; a toxic of
        that name already there is replaced. ``stream``: ``downstream`` (server to client)
        or ``upstream``; ``toxicity``: the share of connections it applies to."""
        toxic = {
            "name": name,
            "type": kind,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        path = f"/proxies/{_quoted(proxy)}/toxics"
        if self._request("POST", path, toxic, conflict_ok=True) is _CONFLICT:
            self.remove_toxic(proxy, name)
            self._request("POST", path, toxic)

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove toxic ``name`` from ``proxy``; nothing happens when it is not there."""
        path = f"/proxies/{_quoted(proxy)}/toxics/{_quoted(name)}"
        self._request("DELETE", path, missing_ok=True)

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        """Disable ``proxy`` (it closes its listener and every connection through it: a
        partition) or enable it again."""
        self._request("PATCH", f"/proxies/{_quoted(proxy)}", {"enabled": enabled})

    def reset(self) -> None:
        """Heal everything: every proxy enabled, every toxic removed."""
        self._request("POST", "/reset")

    def proxies(self) -> dict[str, Any]:
        """Every proxy by name, as Toxiproxy describes it (listen, upstream, enabled,
        toxics)."""
        found = self._request("GET", "/proxies")
        assert isinstance(found, dict)
        return found

    def _request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        missing_ok: bool = False,
        conflict_ok: bool = False,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            if (missing_ok and error.code == 404) or (conflict_ok and error.code == 409):
                return _CONFLICT if error.code == 409 else None
            raise InfraError(
                f"toxiproxy {method} {path}: {error.code} {_message(error.read())}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            raise InfraError(
                f"toxiproxy {method} {path}: no answer on port {self.port} ({error}); "
                "is it running (`python -m infra start toxiproxy`)?"
            ) from None
        return json.loads(raw) if raw.strip() else None


# Returned by _request for a 409 the caller accepted (add_toxic: the name is taken).
_CONFLICT = object()


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip()
