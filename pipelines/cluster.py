"""The cluster stack on loopback: ZooKeeper, Kafka nodes, ClickHouse shards x replicas and the Flink session cluster.

`make cluster-up` / `make cluster-down` / `make cluster-status` call `python -m pipelines.cluster
up|down|status`; `python -m pipelines.cluster env` prints the settings that point viewcount at it.
Each node is a plain process with its folder (configuration, data, pid, log) under
the state folder's cluster/; the pieces are the single-node stack's (pipelines/stack/: start and
stop by pid, readiness waits, Kafka's and ClickHouse's templates, the generated credentials), and
every port and size is Settings.cluster's. Starting is idempotent: what runs is left alone, what
is missing is started, so `up` also brings back a node that was killed. docs/scale-out.md.
"""

from __future__ import annotations

import base64
import shlex
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from string import Template
from urllib.parse import urlparse

from pipelines.config import ClickHouseNode, Settings
from pipelines.stack import run_action
from pipelines.stack.clickhouse_server import clickhouse_server, ensure_credentials, start_clickhouse
from pipelines.stack.kafka_broker import (
    create_topics,
    format_kafka,
    kafka_classpath,
    kafka_ready,
    launch_kafka,
    render_kafka,
)
from pipelines.stack.services import (
    STACK_DIR,
    Service,
    StackError,
    ensure_port_free,
    java,
    port_taken,
    rss_mib,
    stop_services,
    wait_until,
)
from pipelines.stream import flink_cluster

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
# Debian's zookeeper.jar names its dependencies in its manifest but no logging backend: these two
# (pulled in with it) carry its log to our log4j.properties, else it logs nothing at all.
ZOOKEEPER_LOG_JARS = (Path("/usr/share/java/slf4j-log4j12.jar"), Path("/usr/share/java/log4j-1.2.jar"))
MOVE_PORTS = "move the cluster stack's ports with VIEWCOUNT_CLUSTER_PORT_BASE (pipelines/config.py, ClusterLayout)"


def _home(settings: Settings) -> Path:
    return settings.state_dir / "cluster"


def zookeeper_service(settings: Settings) -> Service:
    return Service("zookeeper", _home(settings) / "zookeeper", "org.apache.zookeeper.server.ZooKeeperServerMain")


def kafka_services(settings: Settings) -> dict[int, Service]:
    return {n: Service(f"kafka-{n}", _home(settings) / f"kafka-{n}", "kafka.Kafka")
            for n in settings.cluster.kafka_node_ids}


def clickhouse_services(settings: Settings) -> dict[ClickHouseNode, Service]:
    return {node: Service(node.name, _home(settings) / node.name, "clickhouse")
            for node in settings.cluster.clickhouse_nodes}


def _clickhouse_url_at(url: str, port: int, alternatives: tuple[ClickHouseNode, ...] = ()) -> str:
    parsed = urlparse(url)
    credentials = parsed.netloc.rpartition("@")[0]
    alt_hosts = f"alt_hosts={','.join(f'127.0.0.1:{node.tcp_port}' for node in alternatives)}" if alternatives else ""
    return parsed._replace(netloc=f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}",
                           query=alt_hosts).geturl()


def server_settings(settings: Settings, node: ClickHouseNode,
                    alternatives: tuple[ClickHouseNode, ...] = ()) -> Settings:
    """settings with ClickHouse pointed at one server of the cluster (its native and HTTP ports), and
    at `alternatives` in turn when that one refuses (none: that server or an error)."""
    return replace(settings, clickhouse_url=_clickhouse_url_at(settings.clickhouse_url, node.tcp_port, alternatives),
                   clickhouse_http_port=node.http_port)


def cluster_settings(settings: Settings) -> Settings:
    """settings pointed at the cluster stack: its Kafka nodes, its first ClickHouse server with the
    cluster's shape (replicated tables behind Distributed ones, pipelines/store/shapes.py) and the
    other servers as alternatives (any server reads and writes every shard through the Distributed
    tables, so a client whose server is down goes on with the next), its Flink session cluster at
    one task per TaskManager slot."""
    layout = settings.cluster
    first, *others = layout.clickhouse_nodes
    return replace(server_settings(settings, first, tuple(others)), kafka_bootstrap=layout.kafka_bootstrap,
                   clickhouse_cluster=layout.clickhouse_cluster,
                   clickhouse_servers_cluster=layout.clickhouse_servers_cluster,
                   flink_cluster=flink_cluster.address(settings), parallelism=layout.taskmanagers)


def environment(settings: Settings) -> dict[str, str]:
    """The VIEWCOUNT_* variables that point any `viewcount` command at the cluster stack (those of
    cluster_settings). The ClickHouse URL carries no password: the stack's generated ones are read
    from the state folder's credentials file, as on the single-node stack."""
    on = cluster_settings(settings)
    url = urlparse(on.clickhouse_url)
    user = url.username or on.clickhouse.user
    return {
        "VIEWCOUNT_KAFKA_BOOTSTRAP": on.kafka_bootstrap,
        "VIEWCOUNT_CLICKHOUSE_URL": url._replace(netloc=f"{user}@{url.hostname}:{url.port}").geturl(),
        "VIEWCOUNT_CLICKHOUSE_HTTP_PORT": str(on.clickhouse_http_port),
        "VIEWCOUNT_CLICKHOUSE_CLUSTER": on.clickhouse_cluster,
        "VIEWCOUNT_CLICKHOUSE_SERVERS_CLUSTER": on.clickhouse_servers_cluster,
        "VIEWCOUNT_FLINK_CLUSTER": on.flink_cluster,
        "VIEWCOUNT_PARALLELISM": str(on.parallelism),
    }


def env(settings: Settings) -> list[str]:
    """`eval "$(python -m pipelines.cluster env)"`: this shell's viewcount commands use the cluster."""
    return [f"export {name}={shlex.quote(value)}" for name, value in environment(settings).items()]


# ---------------------------------------------------------------- before anything starts


def _ports(settings: Settings) -> list[tuple[Service | None, int, str]]:
    """Every port the cluster listens on: (its service, or None for Flink's, port, what it is)."""
    layout = settings.cluster
    found: list[tuple[Service | None, int, str]] = [
        (zookeeper_service(settings), layout.zookeeper_port, "ZooKeeper's client port")]
    for n, service in kafka_services(settings).items():
        found += [(service, layout.kafka_broker_port(n), f"{service.name}'s broker listener"),
                  (service, layout.kafka_controller_port(n), f"{service.name}'s controller listener")]
    for node, service in clickhouse_services(settings).items():
        found += [(service, node.tcp_port, f"{node.name}'s native protocol"),
                  (service, node.http_port, f"{node.name}'s HTTP interface"),
                  (service, node.interserver_port, f"{node.name}'s replica fetches")]
    found += [(None, port, f"the Flink JobManager's {what}") for what, port in flink_cluster.ports(settings).items()]
    return found


def preflight(settings: Settings) -> None:
    """Raise before starting anything, saying what to do, if a program is missing or a port of a
    node that is not running is taken by some other process."""
    java()
    kafka_classpath(settings)
    clickhouse_server()
    if not ZOOKEEPER_JAR.exists():
        raise StackError(f"no {ZOOKEEPER_JAR}: run `make zookeeper` (installs Debian's zookeeper)")
    flink_up = flink_cluster.overview(settings) is not None
    taken = [f"{port} ({what})" for service, port, what in _ports(settings)
             if (service.running_pid() is None if service else not flink_up) and port_taken(port)]
    if taken:
        raise StackError(f"ports taken by other processes: {', '.join(taken)}: stop them, or {MOVE_PORTS}")


# ---------------------------------------------------------------- ZooKeeper


def start_zookeeper(settings: Settings, timeout_s: float = 60.0) -> str:
    service = zookeeper_service(settings)
    port = settings.cluster.zookeeper_port
    if service.running_pid() is not None:
        return f"zookeeper already running (pid {service.running_pid()}) at 127.0.0.1:{port}"
    ensure_port_free(port, "ZooKeeper", MOVE_PORTS)
    (service.home / "data").mkdir(parents=True, exist_ok=True)
    config = service.home / "zoo.cfg"
    template = Template((STACK_DIR / "zookeeper" / "zoo.cfg.template").read_text())
    config.write_text(template.substitute(home=service.home.resolve(), client_port=port))
    heap = settings.cluster.zookeeper_heap
    pid = service.start([java(), f"-Xmx{heap}", *_zookeeper_jvm_flags(), "-cp", _zookeeper_classpath(),
                         "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)])
    wait_until(f"ZooKeeper at 127.0.0.1:{port}", lambda: _zookeeper_ok(port), service, timeout_s)
    return f"zookeeper started (pid {pid}) at 127.0.0.1:{port}, log {service.log_file}"


def _zookeeper_classpath() -> str:
    return ":".join(str(jar) for jar in (ZOOKEEPER_JAR, *ZOOKEEPER_LOG_JARS) if jar.exists())


def _zookeeper_jvm_flags() -> list[str]:
    return [f"-Dlog4j.configuration=file:{STACK_DIR / 'zookeeper' / 'log4j.properties'}"]


def _zookeeper_ok(port: int) -> bool:
    """ZooKeeper serves: `srvr` answers with its mode. `ruok` answers `imok` as soon as the port
    listens, while the server may still be loading its snapshot and refuses sessions ("ZooKeeperServer
    not running"): a root created then failed with ConnectionLoss (seen with 19,000 transactions to load)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"srvr")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            return b"Mode: " in answer
    except OSError:
        return False


def ensure_zookeeper_root(settings: Settings) -> None:
    """Create ClickHouse's root node: a server started without it stops its DDL worker for good."""
    root = settings.cluster.zookeeper_root
    done = subprocess.run(
        [java(), *_zookeeper_jvm_flags(), "-cp", _zookeeper_classpath(), "org.apache.zookeeper.ZooKeeperMain",
         "-server", f"127.0.0.1:{settings.cluster.zookeeper_port}", "create", root],
        capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    if f"Created {root}" not in said and "already exists" not in said:
        raise StackError(f"could not create {root} in ZooKeeper: {said.strip()[-500:]}")


# ---------------------------------------------------------------- Kafka


def _kafka_cluster_id(settings: Settings) -> str:
    """One id for every node, made once (Kafka's own form: 16 random bytes, base64 without padding)."""
    path = _home(settings) / "kafka-cluster-id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode() + "\n")
    return path.read_text().strip()


def start_kafka_nodes(settings: Settings, timeout_s: float = 120.0) -> list[str]:
    """Start the Kafka nodes not running (all launched before any wait: a quorum needs a majority),
    then wait until every node answers and the cluster names them all."""
    layout = settings.cluster
    messages, started = [], []
    for n, service in kafka_services(settings).items():
        if service.running_pid() is not None:
            messages.append(f"{service.name} already running (pid {service.running_pid()}) at "
                            f"127.0.0.1:{layout.kafka_broker_port(n)}")
            continue
        properties = render_kafka(
            service, node_id=n, controller_quorum=f"controller.quorum.voters={layout.kafka_voters}",
            broker_address=f"127.0.0.1:{layout.kafka_broker_port(n)}",
            controller_address=f"127.0.0.1:{layout.kafka_controller_port(n)}", partitions=settings.topic_partitions,
            replication_factor=layout.replication_factor, min_insync_replicas=layout.min_insync_replicas)
        format_kafka(settings, properties, _kafka_cluster_id(settings), standalone=False)
        started.append((n, service, launch_kafka(settings, service, properties, (layout.kafka_heap,) * 2)))
    for n, service, _ in started:
        broker = f"127.0.0.1:{layout.kafka_broker_port(n)}"
        wait_until(f"Kafka {service.name} at {broker}", lambda broker=broker: kafka_ready(broker),
                   service, timeout_s)
    if started:
        every = layout.kafka_nodes
        wait_until(f"the Kafka cluster at {layout.kafka_bootstrap} with {every} live brokers",
                   lambda: kafka_ready(layout.kafka_bootstrap, brokers=every), started[0][1], timeout_s)
    messages += [f"{service.name} started (pid {pid}) at 127.0.0.1:{layout.kafka_broker_port(n)}, "
                 f"log {service.log_file}" for n, service, pid in started]
    return messages


# ---------------------------------------------------------------- ClickHouse


def start_clickhouse_nodes(settings: Settings) -> list[str]:
    """Every server with its cluster section and the single-node stack's users, one after another."""
    from pipelines.store.clickhouse import render_cluster_config

    messages = []
    for node, service in clickhouse_services(settings).items():
        own = server_settings(settings, node)
        ensure_credentials(own)
        render_cluster_config(own, node, service.home)
        if service.running_pid() is None:
            _restore_from_replicas(service.home)
        messages.append(start_clickhouse(own, service=service, port_remedy=MOVE_PORTS))
    return messages


def _restore_from_replicas(home: Path) -> None:
    """Let a server that stops start again whatever its parts look like. Killed -9 while it took
    inserts, a replica keeps parts ZooKeeper never recorded (never acknowledged to any writer), and
    18.16 then refuses to load the table ("The local set of parts ... doesn't look like the set of
    parts in ZooKeeper") and exits. This flag, read and removed by the server at its start, makes it
    detach those parts and fetch what it misses from the shard's other replica."""
    flags = home / "data" / "flags"
    flags.mkdir(parents=True, exist_ok=True)
    (flags / "force_restore_data").touch()


# ---------------------------------------------------------------- the whole


def up(settings: Settings) -> list[str]:
    preflight(settings)
    messages = [start_zookeeper(settings)]
    if any(service.running_pid() is None for service in clickhouse_services(settings).values()):
        ensure_zookeeper_root(settings)
    messages += start_kafka_nodes(settings)
    messages += start_clickhouse_nodes(settings)
    created = create_topics(cluster_settings(settings), replication_factor=settings.cluster.replication_factor)
    if created:
        messages.append(f"created topics (replication factor {settings.cluster.replication_factor}): "
                        f"{', '.join(created)}")
    messages += flink_cluster.up(settings)
    return messages


def down(settings: Settings) -> list[str]:
    messages = flink_cluster.down(settings)
    for group in (list(clickhouse_services(settings).values()), list(kafka_services(settings).values()),
                  [zookeeper_service(settings)]):
        messages += [f"{service.name} {'stopped' if stopped else 'was not running'}"
                     for service, stopped in zip(group, stop_services(group), strict=True)]
    return messages


def status(settings: Settings) -> list[str]:
    """Each node: running or not, its ports, its resident memory; the cluster's total."""
    ports: dict[str, list[int]] = {}
    services: dict[str, Service] = {}
    for service, port, _ in _ports(settings):
        if service is not None:
            ports.setdefault(service.name, []).append(port)
            services[service.name] = service
    lines, total = [], 0.0
    for name, service in services.items():
        pid = service.running_pid()
        rss = rss_mib(pid) if pid else 0.0
        total += rss
        state = f"running, pid {pid}, {rss:.0f} MiB" if pid else "stopped"
        lines.append(f"{name}: {state} (ports {', '.join(map(str, ports[name]))}; log {service.log_file})")
    flink_pids = flink_cluster.pids(settings)
    flink_rss = sum(rss_mib(pid) for pid in flink_pids)
    total += flink_rss
    lines += flink_cluster.status(settings)
    if flink_pids:
        lines[-1] += f"; {len(flink_pids)} processes, {flink_rss:.0f} MiB"
    lines.append(f"total resident memory: {total:.0f} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    actions = {"up": up, "down": down, "status": status, "env": env}
    return run_action("pipelines.cluster", __doc__.splitlines()[0], actions, argv)


if __name__ == "__main__":
    sys.exit(main())
