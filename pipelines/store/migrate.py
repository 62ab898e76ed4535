"""Migrations: sql/migrations/NNNN_name.sql applied once each, in order, and recorded.

A migration file is frozen once applied: its checksum is recorded, and a changed file is
refused (write a new migration instead). A file may hold several statements separated by a
line holding only `;`. Statements run with the target database as the session default, so the
SQL never names the database; the two others, the dashboard's companion (see
ClickHouseTarget.dashboard_database) and the writer's private one (ClickHouseTarget.private_database),
are written `${dashboard_database}` and `${private_database}` and filled in here.

The same files make a cluster's schema when given a ClusterShape (VIEWCOUNT_CLICKHOUSE_CLUSTER):
pipelines/store/shapes.py renders each statement into its replicated and distributed form. Without
one, every statement runs exactly as written.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import REPO_ROOT, ClickHouseTarget, analysis_database, private_database, queues_database
from pipelines.store import analysis, shapes
from pipelines.store.shapes import ClusterShape

MIGRATIONS_DIR = REPO_ROOT / "sql" / "migrations"
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
RECORD_TABLE = shapes.RECORD_TABLE
DASHBOARD_DATABASE = "${dashboard_database}"
PRIVATE_DATABASE = "${private_database}"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def statements(self, database: str = "viewcount", shape: ClusterShape | None = None) -> list[str]:
        """The statements to run with `database` as the session default: as written, or for a cluster."""
        database = _validate_database_name(database)
        text = (self.text.replace(DASHBOARD_DATABASE, dashboard_database(database))
                .replace(PRIVATE_DATABASE, private_database(database)))
        parts = re.split(r"^\s*;\s*$", text, flags=re.MULTILINE)
        written = [p.strip() for p in parts if _without_comments(p).strip()]
        if shape is None:
            return written
        rendered = []
        for number, statement in enumerate(written, 1):
            try:
                rendered += shape.render(statement, database)
            except shapes.ShapeError as error:
                raise MigrationError(f"{self.path.name}, statement {number}: {error}") from None
        return rendered


def dashboard_database(database: str) -> str:
    return ClickHouseTarget("", 0, "", "", database).dashboard_database


def _without_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_case_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number in {directory}")
    return found


def _validate_database_name(database: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise MigrationError(f"database name {database!r} is not a plain identifier")
    return database


def apply_migrations(client, database: str, directory: Path = MIGRATIONS_DIR,
                     shape: ClusterShape | None = None) -> list[str]:
    """Create the database if needed, apply pending migrations in order; names of those applied.
    With a shape, on every server of its cluster (the record of what was applied is replicated to
    all of them, so any server may run the next migration)."""
    database = _validate_database_name(database)
    settings = shapes.SETTINGS if shape else None
    for statement in shapes.render(f"CREATE DATABASE IF NOT EXISTS {database}", database, shape):
        client.execute(statement)
    for statement in shapes.render(
        f"CREATE TABLE IF NOT EXISTS {database}.{RECORD_TABLE} "
        "(version UInt32, name String, checksum String, applied_at DateTime) "
        "ENGINE = MergeTree ORDER BY version", database, shape
    ):
        client.execute(statement)
    recorded = {
        version: (name, checksum)
        for version, name, checksum in client.execute(
            f"SELECT version, name, checksum FROM {database}.{RECORD_TABLE}"
        )
    }
    applied = []
    for migration in migrations(directory):
        if migration.version in recorded:
            name, checksum = recorded[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.path.name} changed after it was applied as {name}: "
                    "migrations are frozen; put the change in a new numbered file"
                )
            continue
        for statement in migration.statements(database, shape):
            _execute_in(client, database, statement, settings)
        client.execute(
            f"INSERT INTO {database}.{RECORD_TABLE} (version, name, checksum, applied_at) VALUES",
            [(migration.version, migration.name, migration.checksum, _now())],
        )
        applied.append(migration.path.name)
    _ensure_pseudonym_key(client, database)
    if shape is None:  # the analyst's database on a cluster: not done yet (docs/scale-out.md)
        # After the key: the analyst's pseudonymous views read it (an empty key would hash without one).
        analysis.ensure(client, database)
    return applied


def _ensure_pseudonym_key(client, database: str) -> None:
    # The pseudonym key (migration 0012) is a secret of each database: made here, once, as data.
    if client.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'pseudonym_key'",
                      {"d": database})[0][0]:
        from pipelines.store.pseudonyms import ensure_key

        client.execute(f"USE {database}")
        ensure_key(client)


# Held while this process drops Kafka tables (here, and when streams.ensure replaces a consumer):
# two drops side by side aborted 18.16 (see drop_database); one drop beside other work did not
# (tried: six namespaces dropped by a thread while others were created and loaded).
KAFKA_TABLE_DROPS = threading.Lock()


def drop_database(client, database: str, shape: ClusterShape | None = None) -> None:
    """Drop a database the migrations made, with its dashboard and analysis companions (views first), the
    database of its Kafka consumers (before the tables their views write to) and its private
    database (after the Merge table that reads it). One table at a time: 18.16 takes 3.0 s to
    stop each Kafka consumer, and dropping them side by side (tried: four connections) aborted the
    server a few seconds later. The 3 s are a wait for every librdkafka handle of the server to be
    gone (`rd_kafka_wait_destroyed`, 3,000 ms, in StorageKafka's shutdown), which never succeeds
    while another database's consumers run: measured 3.03 s a table with or without its view dropped
    first, and with librdkafka's heartbeat at 200 ms instead of 3 s.
    With a shape, on every server of its cluster."""
    database = _validate_database_name(database)
    on = f" ON CLUSTER {shape.cluster}" if shape else ""
    for name in (dashboard_database(database), analysis_database(database), queues_database(database), database,
                 private_database(database)):
        # The lock is held for one Kafka table at a time, not for the whole database: another drop
        # waits 3 s at most, not a namespace's 12-16 s.
        tables = client.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": name})
        for table, engine in sorted(tables, key=lambda t: t[1] == "Kafka"):  # the consumers' views first
            if engine in ("MaterializedView", "Kafka"):
                with KAFKA_TABLE_DROPS if engine == "Kafka" else contextlib.nullcontext():
                    client.execute(f"DROP TABLE IF EXISTS {name}.`{table}`{on}")
        client.execute(f"DROP DATABASE IF EXISTS {name}{on}")


def _execute_in(client, database: str, statement: str, settings: dict | None = None) -> None:
    # clickhouse-driver has no per-query database; USE sets it for this connection's session.
    client.execute(f"USE {database}")
    if settings:
        client.execute(statement, settings=settings)
    else:
        client.execute(statement)


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0)
