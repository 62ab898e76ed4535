"""Our service processes: started and stopped by pid, their ports, readiness and memory.

Every service writes its pid and log under the state folder; starting is idempotent (a live
recorded pid is left alone) and waits for readiness with a deadline, naming the service and its log
when it fails. The local stack (Kafka, ClickHouse) and the cluster stack start through here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import REPO_ROOT

STACK_DIR = REPO_ROOT / "stack"


class StackError(RuntimeError):
    """A service could not be started or reached; the message says which, and where its log is."""


def print_lines(action: Callable[[], Iterable[str] | None]) -> int:
    """A command's action run: its lines on stdout, a StackError as one line on stderr, the exit code
    (1 for the error)."""
    try:
        lines = list(action() or [])
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


@dataclass(frozen=True)
class Service:
    """A process of ours: its folder (pid file, log, configuration) and a word of its command line
    (marker) that tells it from whatever process later reuses its pid."""

    name: str
    home: Path
    marker: str

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    @property
    def log_file(self) -> Path:
        return self.home / f"{self.name}.log"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # A recycled pid belongs to someone else: only trust it if it is still our program.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if self.marker.encode() in cmdline else None

    def started_process_alive(self) -> bool:
        """Whether the process this service recorded still runs (not exited, not a zombie). Unlike
        running_pid, it does not ask for the program's name: right after start the child may not
        have exec'd the service yet, and its command line is still its parent's."""
        try:
            pid = int(self.pid_file.read_text().strip())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ValueError, IndexError, OSError):
            return False
        return state not in ("Z", "X")

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
                env=env,
                start_new_session=True,  # survives the make process; stopped by `make down`
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        return stop_services([self], timeout_s)[0]


def stop_services(services: list[Service], timeout_s: float = 30.0) -> list[bool]:
    """SIGTERM to every running one at once, SIGKILL to those still there at the deadline; whether
    each was running. At once: the nodes of a cluster each wait for the others while shutting down."""
    pids = [service.running_pid() for service in services]
    stop_processes([pid for pid in pids if pid is not None], timeout_s)
    for service in services:
        service.pid_file.unlink(missing_ok=True)
    return [pid is not None for pid in pids]


def stop_processes(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM to every one at once, SIGKILL to those still there at the deadline; returns those."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def stop_group(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM to a child started with `start_new_session=True` and every process of its group
    (a job's JVM, dagster dev's three); SIGKILL to the group if the child is still there at the
    deadline. The group is signalled only while its leader is not yet reaped, so its id cannot
    have been taken by someone else's group."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _alive(pid: int) -> bool:
    """Whether pid still runs. A child of this process (a test that started the stack in-process)
    is reaped here once it exits: as a zombie it would look alive until the deadline."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# Which TCP sockets in LISTEN state a process holds, read from the kernel: its `/proc/<pid>/fd`
# gives its sockets' inodes, `/proc/net/tcp` and `/proc/net/tcp6` the LISTEN sockets by inode.
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _socket_inodes(pid: int) -> set[int]:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _decode(address: str) -> tuple[Address, int]:
    host, port = address.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp* print each 32-bit word of the address in host (little-endian) order.
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered), int(port, 16)


def listeners_by_pid(pids: set[int]) -> dict[int, list[tuple[Address, int]]]:
    """(address, port) of every TCP socket in LISTEN state each of pids holds open (a socket two
    processes share, as after a fork, counts for each)."""
    holders: dict[int, list[int]] = {}
    for pid in pids:
        for inode in _socket_inodes(pid):
            holders.setdefault(inode, []).append(pid)
    found: dict[int, list[tuple[Address, int]]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 on this machine
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in holders:  # 0A: TCP_LISTEN
                for pid in holders[int(fields[9])]:
                    found.setdefault(pid, []).append(_decode(fields[1]))
    return found


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS), MiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_taken(port: int) -> bool:
    """Whether something listens on this loopback port."""
    return port_open("127.0.0.1", port)


def ensure_port_free(port: int, what: str, remedy: str) -> None:
    """Raise, saying what to do, when something else already listens on a loopback port we need."""
    if port_taken(port):
        raise StackError(f"port {port} ({what}) is taken by another process: stop it, or {remedy}")


def wait_until(what: str, ready, service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not service.started_process_alive():
            raise StackError(f"{what} exited during start-up; see its log: {service.log_file}")
        time.sleep(0.25)
    raise StackError(f"{what} was not ready after {timeout_s:.0f} s; see its log: {service.log_file}")


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java:
        raise StackError("no `java` on PATH: install OpenJDK 17 (apt-get install openjdk-17-jre-headless)")
    return str(java)
