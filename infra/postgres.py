"""PostgreSQL: a project-owned cluster in .state/postgres with one database per service.

PostgreSQL refuses to run as root. When the launcher is root (CI), initdb and postgres
run as the `postgres` user created by the Debian package, and the data directory is
owned by it. If that user cannot reach the repository (a `mktemp -d` clone is mode 700),
the data directory moves to /tmp and .state/postgres becomes a symlink to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from infra.base import Component, Launch
from infra.console import say
from infra.install import postgres_bin_dir
from infra.settings import HOST, REPO, SERVICES, STATE, InfraError, Ports

SERVER_USER = "postgres"
LINK = STATE / "postgres"


class Postgres(Component):
    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients, where SIGTERM
    # ("smart") would wait forever on the services' connection pools.
    stop_signal = signal.SIGINT

    def main_port(self, ports: Ports) -> int:
        return ports.postgres

    def install(self) -> None:
        postgres_bin_dir(install_if_missing=True)

    def prepare(self, ports: Ports) -> None:
        data = data_dir()
        if (data / "PG_VERSION").is_file():
            return
        say(f"    initdb {data}")
        argv = [
            str(postgres_bin_dir() / "initdb"),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            # The C locale exists everywhere; a host locale may not be generated.
            "--no-locale",
            "-D",
            str(data),
        ]
        result = subprocess.run(
            argv, user=server_user(), cwd="/", capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise InfraError(f"initdb failed (exit {result.returncode}):\n{result.stderr}")

    def launch(self, ports: Ports) -> Launch:
        argv = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(data_dir()),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"port={ports.postgres}",
            # TCP only: no socket file to clash with a system cluster's /var/run/postgresql.
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
            # Statement counts per order for `make bench` (docs/benchmark.md); the extension
            # itself is created by whoever reads it.
            "-c",
            "shared_preload_libraries=pg_stat_statements",
        ]
        return Launch(argv=argv, env=dict(os.environ), cwd=Path("/"), user=server_user())

    def is_ready(self, ports: Ports) -> bool:
        # -U: without it the probe logs "role root does not exist" every time.
        probe = [str(client("pg_isready")), "-q", "-h", HOST, "-p", str(ports.postgres)]
        probe += ["-U", "postgres", "-d", "postgres"]
        return subprocess.run(probe, check=False, timeout=10).returncode == 0

    def after_ready(self, ports: Ports) -> None:
        existing = set(psql(ports, "SELECT datname FROM pg_database").split())
        for database in SERVICES:
            if database not in existing:
                # Quoted: "order" is a reserved word.
                psql(ports, f'CREATE DATABASE "{database}"')
                say(f"    created database {database}")


def client(tool: str) -> Path | str:
    """A PostgreSQL client program (``psql``, ``pgbench``, ...): the server's own version's,
    else the one on the PATH (pg_wrapper)."""
    candidate = postgres_bin_dir() / tool
    return candidate if candidate.is_file() else tool


def psql(ports: Ports, sql: str, database: str = "postgres") -> str:
    """Run one SQL statement as the superuser and return its unaligned output."""
    argv = [str(client("psql")), "-h", HOST, "-p", str(ports.postgres), "-U", "postgres"]
    argv += ["-d", database, "-XtAq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise InfraError(f"psql failed for {sql!r}: {result.stderr.strip()}")
    return result.stdout


def server_user() -> str | None:
    """The user PostgreSQL runs as: ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise InfraError(
            "running as root, and PostgreSQL refuses to run as root: create an unprivileged "
            f"`{SERVER_USER}` user (the Debian `postgresql` package does) and try again"
        ) from None
    return SERVER_USER


def data_dir() -> Path:
    """The cluster's data directory, created (empty, owned by the server user) if missing."""
    user = server_user()
    STATE.mkdir(parents=True, exist_ok=True)
    if LINK.is_symlink():
        target = LINK.resolve()
    elif LINK.is_dir() or user is None or _reachable_by(user, STATE):
        target = LINK
    else:
        target = _outside_data_dir()
        LINK.symlink_to(target, target_is_directory=True)
        say(f"    note: {SERVER_USER} cannot reach {REPO}; PostgreSQL data lives in {target}")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(target, entry.pw_uid, entry.pw_gid)
    target.chmod(0o700)
    return target


def _reachable_by(user: str, directory: Path) -> bool:
    probe = subprocess.run(["test", "-x", str(directory)], user=user, cwd="/", check=False)
    return probe.returncode == 0


def _outside_data_dir() -> Path:
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
    target = Path(f"/tmp/order-fulfillment-pg-{digest}")
    # A fresh state folder (first start, or after `make clean`) means fresh data: a
    # leftover from an earlier state folder of the same checkout is ours to discard.
    shutil.rmtree(target, ignore_errors=True)
    return target
