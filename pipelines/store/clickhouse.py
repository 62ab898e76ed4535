"""ClickHouse: the table names, connections (writer, analyst, dashboard) with actionable errors,
batched writes, the local server's config and users."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from string import Template

from pipelines.config import ANALYSIS_SUFFIX, REPO_ROOT, ClickHouseNode, Settings, analysis_database
from pipelines.store.analysis import cluster_name
from pipelines.store.tables import (  # noqa: F401 - the table names, re-exported for their readers
    DEAD_LETTERS,
    EVENTS_RAW,
    POST_HOUR,
    POST_MINUTE,
    POST_SURFACE_MINUTE,
    POSTS,
    SPACE_PRESENCE,
    SUBJECT_POSTS,
    SUBJECT_REFRESH_STATE,
    SUBJECT_ROLLUP,
    WRITABLE_TABLES,
)

# Tables the dashboard user reads, through read-through views of the same names in the companion
# database (sql/migrations/0020, 0021): rollups and public post metadata, nothing per viewer.
DASHBOARD_TABLES = frozenset({POST_MINUTE, POST_HOUR, POST_SURFACE_MINUTE, POSTS, SUBJECT_ROLLUP, SUBJECT_POSTS,
                              SUBJECT_REFRESH_STATE})
INSERT_BATCH_ROWS = 100_000

TEMPLATES = REPO_ROOT / "stack" / "clickhouse"


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse could not be reached or refused us; the message says what to do."""


# Server errors that say "not now" rather than "never": the same statement may succeed later, so a
# writer keeps its batch and tries again with backoff, as when the server is unreachable.
BUSY_SERVER_CODES = frozenset({
    159,  # TIMEOUT_EXCEEDED
    201,  # QUOTA_EXPIRED (a user's quota for the interval is used up)
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES (max_concurrent_queries)
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR (between servers)
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY (a replica that lost ZooKeeper)
    252,  # TOO_MANY_PARTS (inserts faster than merges)
})


def is_transient(exc: BaseException) -> bool:
    """True for a failure worth retrying: the server unreachable, the connection lost, or a server
    error of BUSY_SERVER_CODES. Anything else (a wrong statement, a missing table) is a bug to raise."""
    from clickhouse_driver import errors as ch_errors

    if isinstance(exc, ch_errors.ServerException):
        return exc.code in BUSY_SERVER_CODES
    return isinstance(exc, (ch_errors.NetworkError, ch_errors.SocketTimeoutError, ConnectionError, EOFError,
                            OSError))


# The writer's session settings on a ClickHouse cluster (VIEWCOUNT_CLICKHOUSE_CLUSTER; docs/scale-out.md,
# "The writers"). An insert through a Distributed table returns once its rows are on their shards, so
# what is read next (the change feed's check, the subject refresh, a test) sees them. A Distributed
# table in an IN subquery of a query over another is read shard by shard, each shard's own rows:
# right because every such subquery the pipeline runs is keyed like its outer table (post_minute,
# subject_posts, posts and rollup_changes' post notes all by cityHash64 of the post id), and 18.16's
# default refuses the query (code 288). The readers (analyst, dashboard) are read-only and take no
# settings: theirs are their profiles'.
CLUSTER_WRITER_SETTINGS = {"insert_distributed_sync": 1, "distributed_product_mode": "local"}


def connect(settings: Settings, user: str | None = None, password: str | None = None,
            database: str | None = None, check: bool = True, role: str = "writer"):
    """A clickhouse-driver Client for the configured server, checked with a round trip.

    role (writer, analyst, dashboard) picks the user and its password (settings.clickhouse_as)."""
    from clickhouse_driver import Client
    from clickhouse_driver import errors as ch_errors

    target = settings.clickhouse_as(role)
    client = Client(
        host=target.host,
        port=target.port,
        alt_hosts=",".join(target.alt_hosts) or None,  # a cluster's other servers, tried in turn
        user=user or target.user,
        password=target.password if password is None else password,
        database=database or target.database,
        connect_timeout=5,
        send_receive_timeout=300,
        settings={"strings_as_bytes": False,
                  **(CLUSTER_WRITER_SETTINGS if settings.clickhouse_cluster and role == "writer" else {})},
    )
    if check:
        try:
            client.execute("SELECT 1")
        except (ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError) as exc:
            raise ClickHouseUnavailable(
                f"{target.describe()} refused the connection ({exc}): run `make up`, "
                "or set VIEWCOUNT_CLICKHOUSE_URL"
            ) from exc
        except ch_errors.ServerException as exc:
            if exc.code == 81:  # UNKNOWN_DATABASE
                raise ClickHouseUnavailable(
                    f"{target.describe()}: database {database or target.database} does not exist: "
                    "run `viewcount migrate` (or `make up`)"
                ) from exc
            if exc.code in (192, 193, 516):  # unknown user, wrong password, authentication failed
                raise ClickHouseUnavailable(
                    f"{target.describe()} rejected user {user or target.user}: check the user and "
                    f"password in VIEWCOUNT_CLICKHOUSE_URL (or VIEWCOUNT_CLICKHOUSE_{role.upper()}_PASSWORD; "
                    f"the local stack's are in {settings.credentials_file})"
                ) from exc
            if exc.code == 291:  # ACCESS_DENIED to the database
                raise ClickHouseUnavailable(
                    f"{target.describe()}: user {user or target.user} may not use database "
                    f"{database or target.database}: list it in the user's allow_databases "
                    "(the local stack: `make up`; see README, Access)"
                ) from exc
            raise
    return client


def connect_analyst(settings: Settings, check: bool = True):
    """The read-only analyst on the project's analysis database (pipelines/store/analysis.py): every
    table but the pseudonym key's, viewer and listener ids as pseudonyms; quotas, no writes."""
    return connect(settings, role="analyst", database=settings.clickhouse.analysis_database, check=check)


def connect_dashboard(settings: Settings, check: bool = True):
    """The one way dashboards reach ClickHouse: the dashboard user on the companion database, the
    rollups under their own names (DASHBOARD_TABLES), read-only; the per-viewer tables are out of
    its reach."""
    return connect(settings, role="dashboard", database=settings.clickhouse.dashboard_database, check=check)


def sibling(client):
    """Another connection with the same server, user and database: a connection cannot write
    while it is still streaming a SELECT."""
    return connect_like(client, client.connection.host, client.connection.port)


def connect_like(client, host: str, port: int):
    """A connection to the server at host:port as `client`'s user, in its database, with its session
    settings (another server of a cluster: pipelines/store/shards.py)."""
    from clickhouse_driver import Client

    c = client.connection
    return Client(host=host, port=port, user=c.user, password=c.password, database=c.database,
                  connect_timeout=5, send_receive_timeout=300, settings=dict(client.settings))


def wait_ready(settings: Settings, timeout_s: float = 60.0) -> None:
    """Poll until the server answers a query, or raise ClickHouseUnavailable at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connect(settings, database="default").disconnect()
            return
        except ClickHouseUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def insert_rows(client, table: str, columns: Sequence[str], rows: Sequence[tuple]) -> int:
    """Insert rows (values as driver data, never in the SQL text) in batches. Returns rows sent."""
    if table not in WRITABLE_TABLES:
        raise ValueError(f"{table!r} is not a table the pipeline writes: {sorted(WRITABLE_TABLES)}")
    if not all(column.isidentifier() for column in columns):
        raise ValueError(f"bad column list {columns!r}")
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
    for start in range(0, len(rows), INSERT_BATCH_ROWS):
        client.execute(statement, rows[start:start + INSERT_BATCH_ROWS])
    return len(rows)


def render_clickhouse_config(settings: Settings, dashboard_databases: Iterable[str] = (),
                             analyst_databases: Iterable[str] = (), home: Path | None = None) -> Path:
    """Write a server's config.xml and users.xml into home (the local stack's: state folder/clickhouse),
    listening on settings.clickhouse's port; return config.xml.

    Passwords go in as SHA-256 hashes of the stack's generated ones; the dashboard user may use
    the configured database's companion plus dashboard_databases (sessions' test databases); the
    analyst the analysis companions (pipelines/store/analysis.py) of the configured database and of
    each `*_analysis` database among analyst_databases (every database there is may be passed), and
    the dashboard's; never a project database (it holds viewer ids) nor a writer-only one. Each
    analysis companion gets its cluster in config.xml, through which its pseudonymous tables read."""
    home = home or settings.state_dir / "clickhouse"
    for sub in ("data", "tmp", "log", "user_files", "format_schemas"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    allowed = sorted({settings.clickhouse.dashboard_database, *dashboard_databases})
    projects = sorted({settings.clickhouse.database, *(name.removesuffix(ANALYSIS_SUFFIX) for name in analyst_databases
                                                      if name.endswith(ANALYSIS_SUFFIX))})
    readable = sorted({*(analysis_database(name) for name in projects), *allowed})
    writer = settings.clickhouse_as("writer")
    values = {
        "home": str(home.resolve()),
        "tcp_port": settings.clickhouse.port,
        "http_port": settings.clickhouse_http_port,
        "dashboard_databases": "".join(f"<database>{name}</database>" for name in allowed),
        "analyst_databases": "".join(f"<database>{name}</database>" for name in readable),
        "analysis_clusters": "".join(
            f"\n        <{cluster_name(name)}><shard>"
            f"{_replica_xml(settings.clickhouse.port, writer, analysis_database(name))}</shard></{cluster_name(name)}>"
            for name in projects),
    }
    for role in ("writer", "analyst", "dashboard"):
        target = settings.clickhouse_as(role)
        if not target.password:
            raise ValueError(f"no {role} password for the local stack: {settings.credentials_file} is missing")
        values[f"{role}_user"] = target.user
        values[f"{role}_password_sha256"] = hashlib.sha256(target.password.encode()).hexdigest()
    for name in ("config.xml", "users.xml"):
        text = Template((TEMPLATES / f"{name}.template").read_text()).substitute(values)
        _write_private(home / name, text)
    return home / "config.xml"


def _replica_xml(port: int, writer, default_database: str | None = None) -> str:
    """A cluster's replica on this box, logging in as the writer. Each element made from its name:
    the writer's password reaches the rendered file (mode 0600) only, never a tracked one."""
    from xml.sax.saxutils import escape

    fields = {"host": "127.0.0.1", "port": port, "user": writer.user, "password": writer.password}
    if default_database:
        fields["default_database"] = default_database
    return "<replica>" + "".join(f"<{tag}>{escape(str(value))}</{tag}>" for tag, value in fields.items()) + \
        "</replica>"


def render_cluster_config(settings: Settings, node: ClickHouseNode, home: Path) -> Path:
    """Write a cluster server's config.d/cluster.xml (merged over its config.xml at start): its
    macros, interserver port, ZooKeeper with its root, the two clusters and distributed DDL; and
    its users.d/cluster.xml (merged over users.xml): the writers' settings on a cluster."""
    layout = settings.cluster
    writer = settings.clickhouse_as("writer")

    def shard_xml(members: list[ClickHouseNode]) -> str:
        # internal_replication: a Distributed insert writes one replica and the table copies it on.
        replicas = "".join(_replica_xml(member.tcp_port, writer) for member in members)
        internal = "true" if len(members) > 1 else "false"
        return f"            <shard><internal_replication>{internal}</internal_replication>{replicas}</shard>"

    nodes = layout.clickhouse_nodes
    shards = [[n for n in nodes if n.shard == shard] for shard in sorted({n.shard for n in nodes})]
    values = {
        "interserver_port": node.interserver_port, "shard": node.shard, "replica": node.name,
        "zookeeper_port": layout.zookeeper_port, "zookeeper_root": layout.zookeeper_root,
        "cluster": layout.clickhouse_cluster, "servers_cluster": layout.clickhouse_servers_cluster,
        "shards": "\n".join(shard_xml(members) for members in shards),
        "servers": "\n".join(shard_xml([n]) for n in nodes),
    }
    (home / "config.d").mkdir(parents=True, exist_ok=True)
    path = home / "config.d" / "cluster.xml"
    _write_private(path, Template((TEMPLATES / "cluster.xml.template").read_text()).substitute(values))
    # The writers' settings on a cluster (the default profile's, which the Kafka engine inserts
    # with), merged over users.xml: 18.16 reads users.d/ beside it.
    (home / "users.d").mkdir(parents=True, exist_ok=True)
    _write_private(home / "users.d" / "cluster.xml", (TEMPLATES / "cluster-users.xml.template").read_text())
    return path


def _write_private(path: Path, text: str) -> None:
    """Replace a file atomically with mode 0600 (the server reads it as the same user)."""
    import os

    if path.exists() and path.read_text() == text:
        return  # unchanged: leave it (and the server's reload of it) alone
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)
