"""`install`: fetch or build everything the infrastructure needs, once, into .cache/.

Every step checks its result first, so a warm install costs a few stat() calls. Long
steps print a heartbeat and their duration; their full output goes to a log file that
is shown (tail) when they fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from infra.console import duration, heartbeat, say, tail
from infra.settings import CACHE, INFRA, LOGS, REPO, InfraError


def _pinned(module: Path, name: str) -> Path:
    """Where the binary built from ``module`` goes: named after its go.mod and go.sum, so a
    new pin (another version) builds anew instead of running the old binary."""
    digest = hashlib.sha256()
    for file in ("go.mod", "go.sum"):
        digest.update((module / file).read_bytes())
    return CACHE / "bin" / f"{name}-{digest.hexdigest()[:12]}"


KAFKA_LIBS = CACHE / "kafka" / "libs"
KAFKA_POM = REPO / "infra" / "kafka" / "pom.xml"
JAEGER_MODULE = REPO / "infra" / "jaeger"
JAEGER_BIN = _pinned(JAEGER_MODULE, "jaeger")
JAEGER_PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"
TOXIPROXY_MODULE = REPO / "infra" / "toxiproxy"
TOXIPROXY_BIN = _pinned(TOXIPROXY_MODULE, "toxiproxy-server")
TOXIPROXY_PACKAGE = "github.com/Shopify/toxiproxy/v2/cmd/server"


def install(components: Iterable[str] = INFRA) -> None:
    """Make sure the binaries of ``components`` are present (services need nothing)."""
    wanted = set(components)
    with _install_lock():
        if "postgres" in wanted:
            postgres_bin_dir(install_if_missing=True)
        if "kafka" in wanted:
            _ensure_kafka()
        if "jaeger" in wanted:
            _ensure_jaeger()
        if "toxiproxy" in wanted:
            _ensure_toxiproxy()


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    # Concurrent launchers (parallel test sessions) must not run two builds at once.
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "install.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("==> another launcher is installing (a cold Jaeger build takes minutes); waiting")
            with heartbeat("waiting for the other install"):
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise InfraError(f"`{tool}` is not on PATH: {hint}")
    return path


def run_step(title: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
    """Run one long install step with progress lines; raise with its log tail on failure."""
    log = LOGS / f"install-{title.split(maxsplit=1)[0].lower()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"==> {title}")
    started = time.monotonic()
    with log.open("wb") as out, heartbeat(title):
        code = subprocess.run(
            list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        raise InfraError(f"{title} failed (exit {code}); full output in {log}:\n{tail(log)}")
    say(f"    {title}: done in {duration(time.monotonic() - started)}")


# --- PostgreSQL -------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def _find_postgres() -> Path | None:
    on_path = shutil.which("initdb")
    # Resolved: a symlink on PATH points at the directory that also holds psql, pg_isready.
    candidates = [Path(on_path).resolve().parent] if on_path else []
    # Debian keeps the server binaries off PATH, one directory per major version.
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def postgres_bin_dir(*, install_if_missing: bool = False) -> Path:
    """The directory holding initdb, postgres, pg_isready and psql."""
    found = _find_postgres()
    if found is None and install_if_missing:
        _apt_install_postgres()
        found = _find_postgres()
    if found is None:
        raise InfraError(
            "PostgreSQL server binaries (initdb, postgres) not found: "
            "install them, e.g. `apt-get install postgresql`, then run `python -m infra install`"
        )
    return found


def _apt_install_postgres() -> None:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise InfraError(
            "PostgreSQL server binaries (initdb, postgres) not found and cannot be installed "
            "automatically (needs root and apt-get): install the `postgresql` package"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "Dpkg::Options::=--force-confold",
        "postgresql",
    ]
    with _services_not_started():
        try:
            run_step("PostgreSQL install (apt-get)", install, cwd=REPO, env=env)
        except InfraError:
            # A fresh machine has no package lists yet: fetch them and try once more.
            run_step("apt-get update", ["apt-get", "update"], cwd=REPO, env=env)
            run_step("PostgreSQL install (apt-get)", install, cwd=REPO, env=env)


def ensure_browser() -> Path:
    """Debian's Chromium and its ChromeDriver, for the browser tests; installed when
    missing (root and apt-get needed). Returns the chromedriver path."""
    driver = shutil.which("chromedriver")
    if shutil.which("chromium") and driver:
        return Path(driver)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise InfraError(
            "the browser tests need Debian's chromium and chromium-driver packages: "
            "install them (apt-get install chromium chromium-driver)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    try:
        run_step("Chromium install (apt-get)", install, cwd=REPO, env=env)
    except InfraError:
        run_step("apt-get update", ["apt-get", "update"], cwd=REPO, env=env)
        run_step("Chromium install (apt-get)", install, cwd=REPO, env=env)
    driver = shutil.which("chromedriver")
    if driver is None:
        raise InfraError("chromium-driver installed but chromedriver is not on PATH")
    return Path(driver)


@contextlib.contextmanager
def _services_not_started() -> Iterator[None]:
    """Keep the Debian package from starting its own cluster on our port 5432.

    policy-rc.d answering 101 is Debian's documented way to tell maintainer scripts
    not to start services; it is removed again afterwards if we created it.
    """
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


# --- Kafka ------------------------------------------------------------------------------


def kafka_installed() -> bool:
    return any(KAFKA_LIBS.glob("kafka_2.13-*.jar"))


def _ensure_kafka() -> None:
    _require("java", "install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`")
    if kafka_installed():
        return
    mvn = _require("mvn", "install Maven, e.g. `apt-get install maven`")
    # Copy into a scratch folder and rename at the end, so an interrupted download never
    # leaves a half-filled libs folder that the check above would take for complete.
    scratch = KAFKA_LIBS.with_name("libs.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    argv = [
        mvn,
        "-B",
        "-q",
        f"-Dmaven.repo.local={CACHE / 'm2'}",
        "-f",
        str(KAFKA_POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={scratch}",
        "-DincludeScope=runtime",
    ]
    run_step("Kafka jars (mvn dependency:copy-dependencies)", argv, cwd=REPO, env=os.environ)
    shutil.rmtree(KAFKA_LIBS, ignore_errors=True)
    scratch.rename(KAFKA_LIBS)


# --- Jaeger -----------------------------------------------------------------------------


def _ensure_jaeger() -> None:
    _wait_for_foreign_build()
    if JAEGER_BIN.is_file():
        return
    say("    a cold Jaeger build takes several minutes on 2 cores; it is cached afterwards")
    _go_build("Jaeger", JAEGER_MODULE, JAEGER_PACKAGE, JAEGER_BIN)


def _ensure_toxiproxy() -> None:
    if not TOXIPROXY_BIN.is_file():
        _go_build("Toxiproxy", TOXIPROXY_MODULE, TOXIPROXY_PACKAGE, TOXIPROXY_BIN)


def _go_build(title: str, module: Path, package: str, binary: Path) -> None:
    """``go build`` a tool pinned by ``module``'s go.mod/go.sum into ``binary``."""
    go = _require("go", "install the Go toolchain (1.24+), see https://go.dev/dl/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Built beside it and renamed: an interrupted build never leaves a binary behind.
    scratch = binary.with_name(f"{binary.name}.partial")
    env = {
        **os.environ,
        "GOMODCACHE": str(CACHE / "go" / "mod"),
        "GOCACHE": str(CACHE / "go" / "build"),
        "GOFLAGS": "-buildvcs=false",
    }
    argv = [go, "build", "-o", str(scratch), package]
    run_step(f"{title} build (go build)", argv, cwd=module, env=env)
    scratch.replace(binary)


def _wait_for_foreign_build() -> None:
    """Wait for a `go build` writing our binary that was started outside the launcher.

    Our own builds are serialised by the install lock; this covers a build started by
    hand (or an older launcher), which a second concurrent build would only slow down.
    """
    target = str(JAEGER_BIN)
    pids = [pid for pid in _pids_with_cmdline(("build", target)) if pid != os.getpid()]
    if not pids:
        return
    say(f"==> waiting for the Jaeger build already running (pid {pids[0]})")
    started = time.monotonic()
    with heartbeat("Jaeger build (started elsewhere)"):
        while any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(1.0)
    say(f"    it finished after {duration(time.monotonic() - started)} more")


def _pids_with_cmdline(needles: Sequence[str]) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = entry.read_bytes().split(b"\0")
            words = [word.decode(errors="replace") for word in argv]
            if words and Path(words[0]).name == "go" and all(n in words for n in needles):
                pids.append(int(entry.parent.name))
    return pids
