"""The local stack: a real Kafka broker and ClickHouse server on loopback, started and stopped by pid.

`make up` / `make down` call `python -m pipelines.stack up|down`. Every service writes its pid and
log under the state folder; starting is idempotent (a live recorded pid is left alone) and waits
for readiness with a deadline, naming the service and its log when it fails. The first start
generates the ClickHouse users' passwords (state folder, credentials.env, mode 0600).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template

from pipelines.config import REPO_ROOT, ROLES, Settings

STACK_DIR = REPO_ROOT / "stack"


class StackError(RuntimeError):
    """A service could not be started or reached; the message says which, and where its log is."""


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
    for pid in pids:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while pid is not None and _alive(pid):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    for service in services:
        service.pid_file.unlink(missing_ok=True)
    return [pid is not None for pid in pids]


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


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS), MiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def kafka_service(settings: Settings) -> Service:
    return Service("kafka", settings.state_dir / "kafka", "kafka.Kafka")


def clickhouse_service(settings: Settings) -> Service:
    return Service("clickhouse", settings.state_dir / "clickhouse", "clickhouse")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_taken(port: int) -> bool:
    """Whether something listens on this loopback port."""
    return _port_open("127.0.0.1", port)


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


def kafka_classpath(settings: Settings) -> str:
    jars = settings.jars_dir / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"no Kafka broker jars under {jars}: run `make jars`")
    return f"{jars}/*"


def start_kafka(settings: Settings, timeout_s: float = 90.0) -> str:
    service = kafka_service(settings)
    host, port = _host_port(settings.kafka_bootstrap)
    if service.running_pid() is not None:
        return f"kafka already running (pid {service.running_pid()}) at {settings.kafka_bootstrap}"
    ensure_port_free(port, "Kafka", "set VIEWCOUNT_KAFKA_BOOTSTRAP to a free port")
    controller = f"{host}:{settings.kafka_controller_port}"
    properties = render_kafka(
        service, node_id=1, controller_quorum=f"controller.quorum.bootstrap.servers={controller}",
        broker_address=f"{host}:{port}", controller_address=controller, partitions=settings.topic_partitions)
    format_kafka(settings, properties, str(uuid.uuid4()), standalone=True)
    pid = launch_kafka(settings, service, properties, heap=("512m", "1g"))
    wait_until(f"Kafka at {settings.kafka_bootstrap}", lambda: kafka_ready(settings.kafka_bootstrap), service,
               timeout_s)
    return f"kafka started (pid {pid}) at {settings.kafka_bootstrap}, log {service.log_file}"


def render_kafka(service: Service, *, node_id: int, controller_quorum: str, broker_address: str,
                 controller_address: str, partitions: int, replication_factor: int = 1,
                 min_insync_replicas: int = 1) -> Path:
    """Write a node's server.properties (stack/kafka's template) into its folder; return it."""
    service.home.mkdir(parents=True, exist_ok=True)
    properties = service.home / "server.properties"
    template = Template((STACK_DIR / "kafka" / "server.properties.template").read_text())
    properties.write_text(template.substitute(
        node_id=node_id, controller_quorum=controller_quorum, broker_address=broker_address,
        controller_address=controller_address, data_dir=service.home / "data", partitions=partitions,
        replication_factor=replication_factor, min_insync_replicas=min_insync_replicas))
    return properties


def _kafka_log4j() -> str:
    return f"-Dlog4j2.configurationFile={STACK_DIR / 'kafka' / 'log4j2.properties'}"


def format_kafka(settings: Settings, properties: Path, cluster_id: str, standalone: bool) -> None:
    """Format a node's log dir once (Kafka's storage tool); a formatted one is left alone. A single
    node is its own quorum (--standalone); a cluster's nodes share cluster_id and a fixed voter list."""
    if (properties.parent / "data" / "meta.properties").exists():
        return
    argv = [java(), _kafka_log4j(), "-cp", kafka_classpath(settings), "kafka.tools.StorageTool", "format",
            "-t", cluster_id, "-c", str(properties)]
    done = subprocess.run(argv + (["--standalone"] if standalone else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"formatting {properties.parent / 'data'} failed: {(done.stdout + done.stderr).strip()}")


def launch_kafka(settings: Settings, service: Service, properties: Path, heap: tuple[str, str]) -> int:
    """Start a formatted node (heap: -Xms, -Xmx) without waiting for it; its pid."""
    xms, xmx = heap
    return service.start([java(), f"-Xms{xms}", f"-Xmx{xmx}", _kafka_log4j(), "-cp", kafka_classpath(settings),
                          "kafka.Kafka", str(properties)])


def kafka_ready(bootstrap: str, brokers: int = 1) -> bool:
    """Whether the cluster at bootstrap answers metadata naming at least `brokers` live brokers."""
    from confluent_kafka.admin import AdminClient

    if not _port_open(*_host_port(bootstrap.split(",")[0])):
        return False
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - not ready yet, poll again
        return False
    return len(metadata.brokers) >= brokers


def ensure_credentials(settings: Settings) -> Path:
    """Generate the ClickHouse users' passwords once (mode 0600); later starts reuse them."""
    path = settings.credentials_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# ClickHouse passwords of this local stack, generated at its first start; never commit them.",
             "# The code reads them from here unless VIEWCOUNT_CLICKHOUSE_URL or the variables below are set."]
    lines += [f"VIEWCOUNT_CLICKHOUSE_{role.upper()}_PASSWORD={secrets.token_urlsafe(24)}" for role in ROLES]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def _reader_grants(settings: Settings, service: Service | None = None) -> Path:
    """Re-render users.xml and config.xml (under a lock: concurrent sessions each add theirs) letting
    the dashboard user into every dashboard companion that exists now and the analyst into every
    analysis companion (with its cluster), and make a running server load them."""
    from pipelines.store.clickhouse import ClickHouseUnavailable, connect, render_clickhouse_config

    service = service or clickhouse_service(settings)
    home = service.home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing: list[str] = []
        writer = None
        if service.running_pid() is not None:
            try:  # not yet possible on a server still running with the passwords of before
                writer = connect(settings, database="default")
                existing = [name for (name,) in writer.execute("SELECT name FROM system.databases")]
            except ClickHouseUnavailable:
                writer = None
        users = home / "users.xml"
        before = users.stat().st_mtime if users.exists() else 0.0
        config = render_clickhouse_config(
            settings, dashboard_databases=[name for name in existing if name.endswith("_dashboard")],
            analyst_databases=[name for name in existing if name != "system"], home=home)
        # The server notices a changed users.xml by its mtime, in whole seconds: two renders within
        # one second must still look different.
        stamp = max(time.time(), before + 1.0)
        os.utime(users, (stamp, stamp))
        if writer is not None:
            writer.execute("SYSTEM RELOAD CONFIG")
            writer.disconnect()
    return config


def allow_readers(settings: Settings, timeout_s: float = 30.0) -> None:
    """Let the local stack's dashboard and analyst users into settings' companion databases (made
    by the migrations), load the analysis cluster and complete the analysis database with it
    (pipelines/store/analysis.py), polling until each reader can use its own; a no-op unless this
    state folder's ClickHouse is running. An existing server's users and cluster are set by its
    administrator (README, Access)."""
    from pipelines.store import analysis
    from pipelines.store.clickhouse import ClickHouseUnavailable, connect, connect_analyst, connect_dashboard

    if clickhouse_service(settings).running_pid() is None:
        return
    _reader_grants(settings)
    cluster = analysis.cluster_name(settings.clickhouse.database)
    deadline = time.monotonic() + timeout_s
    completed = False
    while True:
        try:
            if not completed:
                writer = connect(settings, database="default")
                try:
                    if not analysis.has_cluster(writer, settings.clickhouse.database):
                        raise ClickHouseUnavailable(f"the server has not loaded cluster {cluster}")
                    analysis.ensure(writer, settings.clickhouse.database)
                finally:
                    writer.disconnect()
                completed = True
            connect_dashboard(settings).disconnect()
            connect_analyst(settings).disconnect()
            return
        except ClickHouseUnavailable as exc:
            if time.monotonic() >= deadline:
                raise StackError(f"the readers cannot use {settings.clickhouse.dashboard_database} and "
                                 f"{settings.clickhouse.analysis_database} after {timeout_s:.0f} s: {exc}") from exc
        time.sleep(0.2)


def start_clickhouse(settings: Settings, timeout_s: float = 60.0, service: Service | None = None,
                     port_remedy: str = "set VIEWCOUNT_CLICKHOUSE_URL to a free port") -> str:
    """Start a ClickHouse server listening where settings.clickhouse points (the local stack's, or
    one of the cluster stack's with its own service folder), and wait until the writer gets in."""
    service = service or clickhouse_service(settings)
    target = settings.clickhouse
    ensure_credentials(settings)
    if service.running_pid() is not None:
        # Running since before the passwords existed, or with an older users.xml: the server
        # reloads users.xml live, so re-rendering it is the whole upgrade.
        _reader_grants(settings, service)
        wait_until(f"ClickHouse at {target.host}:{target.port} with the generated passwords",
                   lambda: _answers(settings), service, timeout_s)
        return f"{service.name} already running (pid {service.running_pid()}) at {target.host}:{target.port}"
    ensure_port_free(target.port, "ClickHouse", port_remedy)
    config = _reader_grants(settings, service)
    pid = service.start([clickhouse_server(), f"--config-file={config}"])
    wait_until(f"ClickHouse at {target.host}:{target.port}", lambda: _answers(settings), service, timeout_s)
    return f"{service.name} started (pid {pid}) at {target.host}:{target.port}, log {service.log_file}"


def clickhouse_server() -> str:
    server = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
    if not Path(server).exists():
        raise StackError("no clickhouse-server: run `make clickhouse` (installs Debian's clickhouse-server)")
    return server


def _answers(settings: Settings) -> bool:
    from pipelines.store.clickhouse import wait_ready

    if not _port_open(settings.clickhouse.host, settings.clickhouse.port):
        return False  # not listening yet: spare the driver's logged traceback of a refused connection
    try:
        wait_ready(settings, timeout_s=1)
    except Exception:  # noqa: BLE001 - not ready yet, poll again
        return False
    return True


def create_topics(settings: Settings, replication_factor: int = 1) -> list[str]:
    """Create the project's topics if missing, with explicit partitions, copies and retention."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(
            name,
            num_partitions=settings.topic_partitions,
            replication_factor=replication_factor,
            config={"retention.ms": str(settings.topic_retention_ms), "max.message.bytes": "67108864"},
        )
        for name in settings.topics.all()
        if name not in existing
    ]
    if not wanted:
        return []
    for name, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"could not create topic {name}: {exc}") from exc
    return [t.topic for t in wanted]


def up(settings: Settings) -> list[str]:
    messages = [start_kafka(settings), start_clickhouse(settings)]
    created = create_topics(settings)
    if created:
        messages.append(f"created topics: {', '.join(created)}")
    return messages


def down(settings: Settings) -> list[str]:
    services = [clickhouse_service(settings), kafka_service(settings)]
    return [f"{service.name} {'stopped' if stopped else 'was not running'}"
            for service, stopped in zip(services, stop_services(services), strict=True)]


def status(settings: Settings) -> list[str]:
    return [_status_line(service) for service in (kafka_service(settings), clickhouse_service(settings))]


def _status_line(service: Service) -> str:
    pid = service.running_pid()
    return f"{service.name}: {'running, pid ' + str(pid) if pid else 'stopped'} (log {service.log_file})"


def run_action(module: str, description: str, actions: dict, argv: list[str] | None) -> int:
    """`python -m <module> <action>`: the action's lines on stdout, a StackError as one line on
    stderr and exit code 1."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("action", choices=list(actions))
    args = parser.parse_args(argv)
    try:
        for line in actions[args.action](Settings.from_env()) or []:
            print(line)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    actions = {"up": up, "down": down, "status": status, "topics": create_topics}
    return run_action("pipelines.stack", __doc__.splitlines()[0], actions, argv)


if __name__ == "__main__":
    sys.exit(main())
