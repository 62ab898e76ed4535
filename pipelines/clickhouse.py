"""ClickHouse: the table names, connections with actionable errors, batched writes, the local config."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from string import Template

from pipelines.config import REPO_ROOT, Settings
from pipelines.tables import (  # noqa: F401 - the table names, re-exported for their readers
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

# The read-only ClickHouse user dashboards (viewcount serve) connect as (stack/clickhouse/users.xml).
DASHBOARD_USER = ("dashboard", "dashboard")
INSERT_BATCH_ROWS = 100_000

TEMPLATES = REPO_ROOT / "stack" / "clickhouse"


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse could not be reached or refused us; the message says what to do."""


def connect(settings: Settings, user: str | None = None, password: str | None = None,
            database: str | None = None, check: bool = True):
    """A clickhouse-driver Client for the configured server, checked with a round trip."""
    from clickhouse_driver import Client
    from clickhouse_driver import errors as ch_errors

    target = settings.clickhouse
    client = Client(
        host=target.host,
        port=target.port,
        user=user or target.user,
        password=target.password if password is None else password,
        database=database or target.database,
        connect_timeout=5,
        send_receive_timeout=300,
        settings={"strings_as_bytes": False},
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
                    "password in VIEWCOUNT_CLICKHOUSE_URL"
                ) from exc
            raise
    return client


def connect_dashboard(settings: Settings, check: bool = True):
    """The one way dashboards reach ClickHouse: read-only, as the dashboard user, in the
    configured database. Where dashboards read from is decided here and nowhere else."""
    user, password = DASHBOARD_USER
    return connect(settings, user=user, password=password, check=check)


def sibling(client):
    """Another connection with the same server, user and database: a connection cannot write
    while it is still streaming a SELECT."""
    from clickhouse_driver import Client

    c = client.connection
    return Client(host=c.host, port=c.port, user=c.user, password=c.password, database=c.database,
                  connect_timeout=5, send_receive_timeout=300)


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


def render_clickhouse_config(settings: Settings) -> Path:
    """Write the local server's config.xml and users.xml under the state folder; return config.xml."""
    home = settings.state_dir / "clickhouse"
    for sub in ("data", "tmp", "log", "user_files", "format_schemas"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    values = {
        "state_dir": str(settings.state_dir.resolve()),
        "tcp_port": settings.clickhouse.port,
        "http_port": settings.clickhouse_http_port,
    }
    for name in ("config.xml", "users.xml"):
        text = Template((TEMPLATES / f"{name}.template").read_text()).substitute(values)
        (home / name).write_text(text)
    return home / "config.xml"
