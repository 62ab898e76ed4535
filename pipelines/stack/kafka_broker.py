"""The local Kafka broker: its configuration rendered and formatted, started, polled, and its topics."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from string import Template

from pipelines.config import Settings
from pipelines.stack.services import (
    STACK_DIR,
    Service,
    StackError,
    ensure_port_free,
    host_port,
    java,
    port_open,
    wait_until,
)


def kafka_service(settings: Settings) -> Service:
    return Service("kafka", settings.state_dir / "kafka", "kafka.Kafka")


def kafka_classpath(settings: Settings) -> str:
    jars = settings.jars_dir / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise StackError(f"no Kafka broker jars under {jars}: run `make jars`")
    return f"{jars}/*"


def start_kafka(settings: Settings, timeout_s: float = 90.0) -> str:
    service = kafka_service(settings)
    host, port = host_port(settings.kafka_bootstrap)
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
    # `--cluster-id=<id>` as one word: an id is base64, and one that begins with "-" (1 in 64 of the
    # cluster's, pipelines.cluster) given as a word of its own is taken for an option and refused.
    argv = [java(), _kafka_log4j(), "-cp", kafka_classpath(settings), "kafka.tools.StorageTool", "format",
            f"--cluster-id={cluster_id}", "-c", str(properties)]
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

    if not port_open(*host_port(bootstrap.split(",")[0])):
        return False
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - not ready yet, poll again
        return False
    return len(metadata.brokers) >= brokers


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
