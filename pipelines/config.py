"""The one typed settings object: every host, port, topic, table and tuning knob, from env or flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REPO_ROOT = Path(__file__).resolve().parent.parent

# The local stack's ClickHouse passwords, generated at its first start (pipelines/stack/), one
# VIEWCOUNT_CLICKHOUSE_<ROLE>_PASSWORD=... line per role; mode 0600, never in the repository.
CREDENTIALS_FILE = "credentials.env"
ROLES = ("writer", "analyst", "dashboard")

# Event types the pipeline reads, each from its own topic, each described by schemas/<type>.v<N>.json.
EVENT_TYPES = ("view", "impression", "post", "presence")


# The job's outputs, each <prefix>.<suffix>: attribute of Topics -> (suffix, what it carries).
OUTPUT_TOPICS = {
    "dead_letter": ("dead-letter", "Rejected records with their reason, origin and bytes."),
    "events_valid": ("events-valid", "Validated events, as the job emits them for the archive (events_raw)."),
    "posts_valid": ("posts-valid", "Validated post creations, for the posts table (conversation attribution)."),
    "presence_valid": ("presence-valid", "Validated Space presence events, for space_presence (listeners)."),
    "post_minute": ("post-minute", "Per post and minute rollups, as the job emits them for ClickHouse."),
    "post_surface_minute": ("post-surface-minute", "Per post, minute, surface and action rollups."),
}


def _output_topic(name: str) -> property:
    suffix, doc = OUTPUT_TOPICS[name]
    return property(lambda self: f"{self.prefix}.{suffix}", doc=doc)


@dataclass(frozen=True)
class Topics:
    """Kafka topic names. Source topics are keyed by post_id, so a post's events share a partition."""

    prefix: str = "viewcount"

    def source(self, event_type: str) -> str:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        return f"{self.prefix}.{event_type}s" if event_type != "presence" else f"{self.prefix}.presence"

    dead_letter = _output_topic("dead_letter")
    events_valid = _output_topic("events_valid")
    posts_valid = _output_topic("posts_valid")
    presence_valid = _output_topic("presence_valid")
    post_minute = _output_topic("post_minute")
    post_surface_minute = _output_topic("post_surface_minute")

    def all(self) -> list[str]:
        return [self.source(t) for t in EVENT_TYPES] + [getattr(self, name) for name in OUTPUT_TOPICS]


QUEUES_SUFFIX = "_queues"
PRIVATE_SUFFIX = "_private"
DASHBOARD_SUFFIX = "_dashboard"
ANALYSIS_SUFFIX = "_analysis"


def queues_database(database: str) -> str:
    """The database of ClickHouse's Kafka consumers (pipelines.stream.streams), which no reader may
    use: a SELECT on a Kafka table consumes its records, and they never reach their table."""
    return f"{database}{QUEUES_SUFFIX}"


def private_database(database: str) -> str:
    """The database of what only the writer may read: the viewer pseudonyms' key
    (pipelines/store/pseudonyms.py; its project database reads it through a Merge table)."""
    return f"{database}{PRIVATE_SUFFIX}"


def analysis_database(database: str) -> str:
    """The database the analyst is confined to: the project's tables under their own names, viewer
    and listener ids as pseudonyms (pipelines/store/analysis.py)."""
    return f"{database}{ANALYSIS_SUFFIX}"


@dataclass(frozen=True)
class ClickHouseTarget:
    host: str
    port: int
    user: str
    password: str
    database: str
    # Other servers of the same cluster ("host:port"), tried in turn when host:port refuses the
    # connection: `?alt_hosts=h:p,h:p` in the URL (clickhouse-driver's own option).
    alt_hosts: tuple[str, ...] = ()

    @classmethod
    def from_url(cls, url: str) -> ClickHouseTarget:
        parsed = urlparse(url)
        if parsed.scheme != "clickhouse":
            raise ValueError(
                f"ClickHouse URL {url!r} must look like clickhouse://user:password@host:port/database"
                "[?alt_hosts=host:port,host:port]"
            )
        query = parse_qs(parsed.query)
        unknown = sorted(set(query) - {"alt_hosts"})
        if unknown:
            raise ValueError(f"ClickHouse URL {url!r}: unknown option(s) {', '.join(unknown)}; the one known is "
                             "alt_hosts=host:port,host:port (other servers to try)")
        alt_hosts = tuple(h for value in query.get("alt_hosts", []) for h in value.split(",") if h)
        for alt in alt_hosts:
            host, _, port = alt.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"ClickHouse URL {url!r}: alt_hosts entry {alt!r} must be host:port")
        return cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 9000,
            user=parsed.username or "default",
            password=parsed.password or "",
            database=(parsed.path or "/").lstrip("/") or "default",
            alt_hosts=alt_hosts,
        )

    def url(self, database: str | None = None) -> str:
        """This target as a URL (its password included), in `database` if given."""
        alt = f"?alt_hosts={','.join(self.alt_hosts)}" if self.alt_hosts else ""
        return f"clickhouse://{self.user}:{self.password}@{self.host}:{self.port}/{database or self.database}{alt}"

    @property
    def dashboard_database(self) -> str:
        """The companion database the dashboard user is confined to: read-through views of the
        rollups only (sql/migrations/0020), never the per-viewer tables."""
        return f"{self.database}{DASHBOARD_SUFFIX}"

    @property
    def queues_database(self) -> str:
        return queues_database(self.database)

    @property
    def analysis_database(self) -> str:
        return analysis_database(self.database)

    @property
    def private_database(self) -> str:
        return private_database(self.database)

    def describe(self) -> str:
        alt = f" or {', '.join(self.alt_hosts)}" if self.alt_hosts else ""
        return f"ClickHouse at {self.host}:{self.port}{alt} (database {self.database}, user {self.user})"


@dataclass(frozen=True)
class ClickHouseNode:
    """One server of the cluster stack: its place (shard, replica) and its three ports."""

    shard: int
    replica: int
    tcp_port: int
    http_port: int
    interserver_port: int

    @property
    def name(self) -> str:
        return f"clickhouse-s{self.shard}r{self.replica}"


@dataclass(frozen=True)
class ClusterLayout:
    """The loopback cluster stack of `make cluster-up`: node counts, sizes and every port. The ports
    derive from one base (VIEWCOUNT_CLUSTER_PORT_BASE), so a taken range moves as a whole; the
    default base keeps clear of the single-node stack (18xxx, 19xxx) and of the ephemeral range."""

    port_base: int = 29000
    kafka_nodes: int = 3
    kafka_heap: str = "512m"
    # Every topic of the cluster: three copies, a write acknowledged by two (acks=all), so one
    # broker may be down without refusing writes or losing an acknowledged one.
    replication_factor: int = 3
    min_insync_replicas: int = 2
    shards: int = 2
    replicas: int = 2
    zookeeper_heap: str = "256m"
    # Every ClickHouse path in ZooKeeper lives under this node, created before the servers start.
    zookeeper_root: str = "/viewcount"
    # The 2 x 2 cluster of tables and reads, and the one of every server as its own shard that
    # `ALTER ... ON CLUSTER` on a Distributed table needs in 18.16 (code 371 on the first).
    clickhouse_cluster: str = "viewcount"
    clickhouse_servers_cluster: str = "viewcount_servers"
    taskmanagers: int = 2
    jobmanager_memory: str = "1024m"
    taskmanager_memory: str = "2048m"

    def __post_init__(self) -> None:
        if not 1 <= self.kafka_nodes <= 9 or not 1 <= self.shards * self.replicas <= 9:
            raise ValueError("the cluster stack's port plan holds at most 9 Kafka nodes and 9 ClickHouse servers")
        if not 1024 < self.port_base <= 65535 - 300:
            raise ValueError(f"cluster port base {self.port_base} leaves no room for its ports (1025 to 65235)")

    @property
    def zookeeper_port(self) -> int:
        return self.port_base + 181

    def kafka_broker_port(self, node_id: int) -> int:
        return self.port_base + 90 + node_id

    def kafka_controller_port(self, node_id: int) -> int:
        return self.port_base + 190 + node_id

    @property
    def kafka_node_ids(self) -> range:
        return range(1, self.kafka_nodes + 1)

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.kafka_broker_port(n)}" for n in self.kafka_node_ids)

    @property
    def kafka_voters(self) -> str:
        """The fixed KRaft quorum: every node is a voter (controller.quorum.voters)."""
        return ",".join(f"{n}@127.0.0.1:{self.kafka_controller_port(n)}" for n in self.kafka_node_ids)

    @property
    def clickhouse_nodes(self) -> list[ClickHouseNode]:
        nodes = []
        for shard in range(1, self.shards + 1):
            for replica in range(1, self.replicas + 1):
                k = (shard - 1) * self.replicas + replica
                nodes.append(ClickHouseNode(shard, replica, tcp_port=self.port_base + k,
                                            http_port=self.port_base + 120 + k,
                                            interserver_port=self.port_base + 10 + k))
        return nodes

    @property
    def flink_rest_port(self) -> int:
        return self.port_base + 81

    @property
    def flink_rpc_port(self) -> int:
        return self.port_base + 82

    @property
    def flink_blob_port(self) -> int:
        return self.port_base + 83


def stack_password(state_dir: Path, role: str) -> str:
    """The local stack's generated password for a role, or '' when the stack has none."""
    key = f"VIEWCOUNT_CLICKHOUSE_{role.upper()}_PASSWORD"
    try:
        lines = (state_dir / CREDENTIALS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return ""
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return ""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VIEWCOUNT_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Everything configurable. `Settings.from_env()` is the only constructor code should use."""

    state_dir: Path = REPO_ROOT / ".state"
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_controller_port: int = 19093
    topic_partitions: int = 4
    # Source topics keep a week: enough to rebuild from Kafka after an outage of the job.
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    # The writer (pipeline, migrations). A password left out of the URL comes from
    # VIEWCOUNT_CLICKHOUSE_WRITER_PASSWORD, else from the local stack's credentials file.
    clickhouse_url: str = "clickhouse://viewcount_writer@127.0.0.1:19000/viewcount"
    # The read-only users, on the same server: analyst (SQL) and dashboard (rollups only).
    clickhouse_analyst_user: str = "analyst"
    clickhouse_dashboard_user: str = "dashboard"
    # (role, password) pairs from VIEWCOUNT_CLICKHOUSE_<ROLE>_PASSWORD.
    clickhouse_passwords: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    clickhouse_http_port: int = 18123
    # The ClickHouse cluster (the servers' remote_servers) the migrations make their tables on:
    # replicated shards and Distributed tables under the same names (pipelines/store/shapes.py).
    # Empty: one server, the tables as sql/migrations/ writes them. The second cluster, every server
    # its own shard, is for ALTERs of the Distributed tables (empty: "<cluster>_servers").
    clickhouse_cluster: str = ""
    clickhouse_servers_cluster: str = ""
    topics: Topics = field(default_factory=Topics)
    # The Flink job: its name keys its consumer group and its checkpoints (one job per name and prefix).
    job_name: str = "rollup-job"
    parallelism: int = 1
    # The most heap the job's JVM may take on the local mini-cluster (-Xmx; empty: the JVM's default,
    # a quarter of the machine's memory; a -Xmx in JVM_ARGS wins). Capped, the stack's memory is flat
    # under its limit whatever the collector prefers (docs/design.md, "The job's JVM collects garbage").
    job_heap: str = "3g"
    # What a crash costs in replay, no more: the sinks write at least once (rows reach ClickHouse as
    # the windows fire, not at the checkpoint), and every checkpoint writes the whole window state
    # (docs/design.md, "Effectively once"; docs/performance.md for what 2 s cost).
    checkpoint_interval_ms: int = 10_000
    # Declared out-of-orderness: a window closes this long after its end (event time).
    watermark_delay_s: int = 10
    # An event's own time moves the watermark only up to its record's Kafka time plus this lead:
    # an event dated ahead (a fast client clock, or a forged time inside event_max_future_s) is
    # counted when its time is reached, and cannot close everyone else's windows early. Keep it
    # at or below 0: a lead L above 0 lets one such event push the watermark to its arrival +
    # L - watermark_delay_s, so honest events of the next L s arrive late (docs/design.md).
    watermark_max_lead_s: int = 0
    # A live source partition silent this long stops holding the watermark back (0 = never).
    source_idle_timeout_s: int = 30
    # Plausible event times, against the time the record reached Kafka (its record timestamp):
    # further ahead (client clock skew) or further back goes to the dead letters with its reason.
    # The past bound is generous by default because replaying an archived night is normal use (the
    # reference night is from 2024); a live deployment may tighten it to days.
    event_max_future_s: int = 3600
    event_max_age_s: int = 5 * 365 * 24 * 3600
    # A record larger than this is rejected (a view is about 200 bytes); its dead letter keeps this much.
    max_event_bytes: int = 64 * 1024
    flink_connector_jar: Path | None = None
    # A standalone Flink session cluster's REST address (host:port); empty: the local mini-cluster.
    flink_cluster: str = ""
    # The loopback cluster stack (make cluster-up): ZooKeeper, Kafka nodes, ClickHouse shards and
    # replicas, the Flink session cluster; its ports and sizes.
    cluster: ClusterLayout = field(default_factory=ClusterLayout)
    # Apache Superset for analysts (make superset), on loopback: 8088 is its usual port.
    superset_port: int = 8088
    # The tracked subjects (pipelines/rollups/subjects.py), read again at every refresh: a subject
    # added while `viewcount run` is live is built from all its history within a second or so.
    subjects_file: Path = REPO_ROOT / "config" / "subjects.toml"
    # The dashboards API's per-client token bucket (pipelines/serve/limits.py): a client address
    # may send api_burst requests at once, then api_rate_per_s a second; beyond that 429. The live
    # page sends 4 requests every 5 s per open tab. 0 for either turns the limit off.
    api_rate_per_s: float = 10.0
    api_burst: int = 40
    # A series asked without from/to covers this many hours up to the subject's newest minute.
    api_default_span_h: int = 24
    # Raw rows (events_raw, space_presence, dead_letters) older than this are dropped, a partition
    # at a time (pipelines/repair/retention.py, daily); the rollups stay. 90 days: a quarter of
    # history to rebuild from (late events, erasures, a fix to a rollup) and to analyse exactly,
    # while no viewer's raw views are kept beyond that (docs/access.md, Retention). 0 keeps them all
    # (replaying an archived night, such as the 2024 reference night, into a stack needs it).
    raw_retention_days: int = 90

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        base = cls()
        state_dir = Path(_env("STATE_DIR", str(base.state_dir)))
        settings = cls(
            state_dir=state_dir,
            kafka_bootstrap=_env("KAFKA_BOOTSTRAP", base.kafka_bootstrap),
            kafka_controller_port=int(_env("KAFKA_CONTROLLER_PORT", str(base.kafka_controller_port))),
            topic_partitions=int(_env("TOPIC_PARTITIONS", str(base.topic_partitions))),
            clickhouse_url=_env("CLICKHOUSE_URL", base.clickhouse_url),
            clickhouse_analyst_user=_env("CLICKHOUSE_ANALYST_USER", base.clickhouse_analyst_user),
            clickhouse_dashboard_user=_env("CLICKHOUSE_DASHBOARD_USER", base.clickhouse_dashboard_user),
            clickhouse_passwords=tuple(
                (role, p) for role in ROLES if (p := _env(f"CLICKHOUSE_{role.upper()}_PASSWORD", ""))),
            clickhouse_http_port=int(_env("CLICKHOUSE_HTTP_PORT", str(base.clickhouse_http_port))),
            clickhouse_cluster=_env("CLICKHOUSE_CLUSTER", base.clickhouse_cluster),
            clickhouse_servers_cluster=_env("CLICKHOUSE_SERVERS_CLUSTER", base.clickhouse_servers_cluster),
            topics=Topics(prefix=_env("TOPIC_PREFIX", base.topics.prefix)),
            job_name=_env("JOB_NAME", base.job_name),
            parallelism=int(_env("PARALLELISM", str(base.parallelism))),
            job_heap=_env("JOB_HEAP", base.job_heap),
            checkpoint_interval_ms=int(
                _env("CHECKPOINT_INTERVAL_MS", str(base.checkpoint_interval_ms))
            ),
            watermark_delay_s=int(_env("WATERMARK_DELAY_S", str(base.watermark_delay_s))),
            watermark_max_lead_s=int(_env("WATERMARK_MAX_LEAD_S", str(base.watermark_max_lead_s))),
            source_idle_timeout_s=int(_env("SOURCE_IDLE_TIMEOUT_S", str(base.source_idle_timeout_s))),
            event_max_future_s=int(_env("EVENT_MAX_FUTURE_S", str(base.event_max_future_s))),
            event_max_age_s=int(_env("EVENT_MAX_AGE_S", str(base.event_max_age_s))),
            max_event_bytes=int(_env("MAX_EVENT_BYTES", str(base.max_event_bytes))),
            flink_cluster=_env("FLINK_CLUSTER", base.flink_cluster),
            cluster=ClusterLayout(port_base=int(_env("CLUSTER_PORT_BASE", str(base.cluster.port_base)))),
            superset_port=int(_env("SUPERSET_PORT", str(base.superset_port))),
            subjects_file=Path(_env("SUBJECTS_FILE", str(base.subjects_file))),
            api_rate_per_s=float(_env("API_RATE_PER_S", str(base.api_rate_per_s))),
            api_burst=int(_env("API_BURST", str(base.api_burst))),
            api_default_span_h=int(_env("API_DEFAULT_SPAN_H", str(base.api_default_span_h))),
            raw_retention_days=int(_env("RAW_RETENTION_DAYS", str(base.raw_retention_days))),
            flink_connector_jar=Path(p) if (p := os.environ.get("VIEWCOUNT_FLINK_CONNECTOR_JAR")) else None,
        )
        return replace(settings, **overrides) if overrides else settings

    @property
    def clickhouse(self) -> ClickHouseTarget:
        """The writer's target: server, database, user and password."""
        return self.clickhouse_as("writer")

    def clickhouse_as(self, role: str) -> ClickHouseTarget:
        """The configured server and database as one of ROLES; a password missing from the URL
        and the environment is the local stack's generated one."""
        if role not in ROLES:
            raise ValueError(f"unknown ClickHouse role {role!r}; known: {', '.join(ROLES)}")
        target = ClickHouseTarget.from_url(self.clickhouse_url)
        if role != "writer":
            user = self.clickhouse_analyst_user if role == "analyst" else self.clickhouse_dashboard_user
            target = replace(target, user=user, password="")
        if target.password:
            return target
        password = dict(self.clickhouse_passwords).get(role) or stack_password(self.state_dir, role)
        return replace(target, password=password)

    @property
    def credentials_file(self) -> Path:
        return self.state_dir / CREDENTIALS_FILE

    @property
    def jars_dir(self) -> Path:
        return self.state_dir / "jars"

    @property
    def checkpoint_dir(self) -> Path:
        """The job's retained checkpoints and savepoints, one folder per topic prefix and job name."""
        return self.state_dir / "flink" / self.topics.prefix / self.job_name

    @property
    def udf_jar(self) -> Path:
        """The job's Java functions (jvm/), built by `make jars`."""
        jar = self.jars_dir / "viewcount-udf.jar"
        if not jar.exists():
            raise FileNotFoundError(f"no {jar}: run `make jars` (builds jvm/ with javac)")
        return jar

    @property
    def udf_dependency_jars(self) -> list[Path]:
        """What our Flink functions need beside Flink (DataSketches), fetched by `make jars`."""
        found = sorted((self.jars_dir / "udf-deps").glob("*.jar"))
        if not found:
            raise FileNotFoundError(f"no jars under {self.jars_dir / 'udf-deps'}: run `make jars`")
        return found

    @property
    def connector_jar(self) -> Path:
        if self.flink_connector_jar is not None:
            return self.flink_connector_jar
        found = sorted((self.jars_dir / "flink").glob("flink-sql-connector-kafka-*.jar"))
        if not found:
            raise FileNotFoundError(
                f"no Flink Kafka connector jar under {self.jars_dir / 'flink'}: run `make jars` "
                "(or set VIEWCOUNT_FLINK_CONNECTOR_JAR)"
            )
        return found[-1]
