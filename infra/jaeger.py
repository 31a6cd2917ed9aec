"""Jaeger v2, built from source once (see infra/install.py), with in-memory storage."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from infra.base import Component, Launch
from infra.install import JAEGER_BIN, install
from infra.settings import HOST, REPO, Ports

CONFIG = REPO / "infra" / "jaeger" / "config.yaml"


class Jaeger(Component):
    name = "jaeger"

    def main_port(self, ports: Ports) -> int:
        return ports.jaeger_ui

    def all_ports(self, ports: Ports) -> tuple[int, ...]:
        return (
            ports.jaeger_ui,
            ports.jaeger_query_grpc,
            ports.jaeger_otlp_grpc,
            ports.jaeger_otlp_http,
        )

    def install(self) -> None:
        install(["jaeger"])

    def launch(self, ports: Ports) -> Launch:
        # config.yaml reads its ports from these variables (`${env:...}` substitution).
        env = {
            **os.environ,
            "JAEGER_UI_PORT": str(ports.jaeger_ui),
            "JAEGER_QUERY_GRPC_PORT": str(ports.jaeger_query_grpc),
            "JAEGER_OTLP_GRPC_PORT": str(ports.jaeger_otlp_grpc),
            "JAEGER_OTLP_HTTP_PORT": str(ports.jaeger_otlp_http),
        }
        return Launch(argv=[str(JAEGER_BIN), "--config", str(CONFIG)], env=env)

    def is_ready(self, ports: Ports) -> bool:
        return http_ok(f"http://{HOST}:{ports.jaeger_ui}/api/services")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
