"""What every component (a server of the infrastructure or a service) tells the launcher."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.settings import REPO, Ports


@dataclass(frozen=True)
class Launch:
    """How to start a component's process."""

    argv: list[str]
    env: Mapping[str, str]
    cwd: Path = REPO
    # Run as this user instead of ours (PostgreSQL refuses to run as root).
    user: str | None = None


class Component(ABC):
    name: str
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 30.0
    ready_timeout: float = 60.0

    @property
    def requires(self) -> tuple[str, ...]:
        """Components that must be running before this one starts."""
        return ()

    @abstractmethod
    def main_port(self, ports: Ports) -> int:
        """The port that identifies the component in `status`."""

    def all_ports(self, ports: Ports) -> tuple[int, ...]:
        """Every port the component binds: all must be free before it starts."""
        return (self.main_port(ports),)

    def install(self) -> None:
        """Fetch or build what the component needs (idempotent, cached)."""

    def prepare(self, ports: Ports) -> None:
        """Create data directories and configuration before the first start."""

    @abstractmethod
    def launch(self, ports: Ports) -> Launch:
        """The command line and environment of the component's process."""

    @abstractmethod
    def is_ready(self, ports: Ports) -> bool:
        """One quick readiness probe; the launcher polls it until it answers True."""

    def after_ready(self, ports: Ports) -> None:
        """Idempotent setup that needs the running server (databases, topics)."""
