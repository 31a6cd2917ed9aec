"""Detached processes: spawning, pid files, liveness, signals and port probes.

Each component runs as the leader of its own session (and so process group), so it
outlives the launcher and a SIGKILL to the group also takes its children with it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.settings import HOST, RUN, STATE

# Popen objects of the processes this launcher started, kept so they are reaped: no
# zombies while a long-lived launcher (`run`, a test session) is alive.
_children: dict[int, subprocess.Popen[bytes]] = {}
_lock_depth = 0


@dataclass(frozen=True)
class PidRecord:
    pid: int
    # Kernel start time of the process: tells our process from a later one reusing the pid.
    start_time: str | None


@atexit.register
def _detach_children() -> None:
    # Components outlive the launcher by design: dropping their Popen objects must not
    # warn that they are "still running".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _children.clear()


def pid_file(name: str) -> Path:
    return RUN / f"{name}.pid"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None without /proc entry."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def write_record(name: str, pid: int) -> None:
    RUN.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "start_time": _start_time(pid)}
    tmp = pid_file(name).with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(pid_file(name))


def read_record(name: str) -> PidRecord | None:
    try:
        data = json.loads(pid_file(name).read_text())
        return PidRecord(pid=int(data["pid"]), start_time=data.get("start_time"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def clear_record(name: str) -> None:
    pid_file(name).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    # Not spawned by this process (or spawned by a previous launcher): nothing to reap.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields is None:
        # Without /proc (not Linux) kill(0) is all we have; with it, the pid just exited.
        return not Path("/proc").is_dir()
    if fields[0] == "Z" and _threads(pid) <= 1:
        return False  # exited; only its parent has yet to collect the status
    return start_time is None or fields[19] == start_time


def _threads(pid: int) -> int:
    # A multi-threaded process (the JVM) shows its leader as a zombie while the other
    # threads still tear down and hold its sockets: it is not gone until they are.
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def running_pid(name: str) -> int | None:
    """The pid of component ``name`` if its pid file points at a live process of ours."""
    record = read_record(name)
    if record is None:
        return None
    if pid_alive(record.pid, record.start_time):
        return record.pid
    clear_record(name)  # stale: the process died or the pid was reused
    return None


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
    user: str | None = None,
) -> int:
    """Start ``argv`` detached in its own session, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            user=user,
            group=_primary_group(user),
            extra_groups=[] if user else None,
        )
    _children[child.pid] = child
    return child.pid


def _primary_group(user: str | None) -> int | None:
    if user is None:
        return None
    return pwd.getpwnam(user).pw_gid


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (our components lead their own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def wait_gone(pid: int, timeout: float, start_time: str | None = None) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; True when it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _settle(pgid: int, limit: float = 5.0) -> None:
    """After a group leader exited, wait briefly until nothing of it is left.

    PostgreSQL refuses to start while the pid in its lock file exists, even as a zombie
    about to be reaped, and a group member still exiting may hold a port.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and (_exists(pgid) or _group_members(pgid)):
        _reap(pgid)
        time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _proc_stat(int(entry.name))
        if fields and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def terminate(pid: int, sig: signal.Signals, timeout: float) -> bool:
    """Ask ``pid`` to exit with ``sig``; SIGKILL its group after ``timeout``.

    Returns True when it exited by itself. Whatever it left behind in its process group
    is killed either way, so no orphan keeps a port or a lock.
    """
    start_time = _start_time(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    graceful = wait_gone(pid, timeout, start_time)
    signal_group(pid, signal.SIGKILL)
    if not graceful:
        wait_gone(pid, 10.0, start_time)
    _settle(pid)
    return graceful


def kill(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and wait until it is gone."""
    start_time = _start_time(pid)
    signal_group(pid, signal.SIGKILL)
    wait_gone(pid, 10.0, start_time)
    _settle(pid)


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (or on a wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: sockets lingering in TIME_WAIT after a restart do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_of(port: int) -> str:
    """Best-effort description of who listens on ``port``, for error messages."""
    ss = shutil.which("ss")
    if ss is None:
        return "unknown process"
    result = subprocess.run(
        [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    users = [
        part for line in result.stdout.splitlines() for part in line.split() if "users:" in part
    ]
    return users[0] if users else "unknown process"


@contextlib.contextmanager
def state_lock() -> Iterator[None]:
    """Serialise launchers that change state (two `start`s at once would spawn two brokers).

    Re-entrant within one process: the public API nests start() inside restart().
    """
    global _lock_depth  # noqa: PLW0603 - one lock per process by design
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "launcher.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)
