"""The migrations' two shapes: a statement of sql/migrations/ as one server runs it, or as a cluster of
replicated shards runs it (docs/scale-out.md, "One schema, two shapes").

The migrations are written once, for one server, and stay frozen (their checksums are the files').
Unset, VIEWCOUNT_CLICKHOUSE_CLUSTER leaves every statement as it is. Set to a cluster's name, each
statement is rendered here, mechanically, from the few forms the migrations are written in:

- a MergeTree table `t` becomes `t_local` ON CLUSTER, Replicated* (ZooKeeper path with the servers'
  `{shard}` and `{replica}` macros), plus `t`, a Distributed table over it sharded by the table's
  key (tables.SHARDING_KEYS): readers and writers keep the name `t`. A table ON_EVERY_SERVER is one
  Replicated* table under its own name whose replicas are all the servers;
- a materialized view over a sharded table fires where its rows land: it reads `src_local` and
  writes `target_local` (its target sharded by the same key). One over anything else (the dashboard's
  Null tables) reads through to the target's Distributed table;
- ALTER: the `_local` tables ON CLUSTER, the Distributed ones ON CLUSTER of every server as its own
  shard (18.16 refuses ALTER of a Distributed table on a cluster of replicas, code 371);
- RENAME and DROP reach both tables (a renamed table's Distributed table is made again: it names
  its local table); INSERT ... SELECT runs once, through the Distributed tables, synchronously.

Every name is written with its database: a statement ON CLUSTER runs on each server in the DDL
worker's session, whose database is not ours. A statement of another form is refused, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.store.tables import DEAD_LETTERS, ON_EVERY_SERVER, SHARDING_KEYS

LOCAL_SUFFIX = "_local"
RECORD_TABLE = "schema_migrations"
# Names a table had only inside a migration (0013 swaps dead_letters for a table partitioned by day).
FORMER_NAMES = {"dead_letters_by_day": DEAD_LETTERS, "dead_letters_unpartitioned": DEAD_LETTERS}
# Settings of a migration's statements on a cluster: an INSERT through a Distributed table is done
# when it returns (18.16 queues it on the server otherwise), so what follows sees its rows.
SETTINGS = {"insert_distributed_sync": 1}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"
_DATABASE = re.compile(r"CREATE DATABASE (?P<ine>IF NOT EXISTS )?(?P<name>\w+)", re.S)
_TABLE = re.compile(rf"CREATE TABLE (?P<ine>IF NOT EXISTS )?(?P<name>{_NAME})\s*\((?P<columns>.*)\)\s*"
                    r"ENGINE = (?P<engine>\w*MergeTree)(?:\((?P<args>[^()]*)\))?(?P<rest>\s.*)?", re.S)
_TABLE_AS = re.compile(rf"CREATE TABLE (?P<ine>IF NOT EXISTS )?(?P<name>{_NAME}) AS (?P<source>{_NAME}) "
                       r"ENGINE = (?P<engine>Null|Merge\([^()]*\))", re.S)
_VIEW = re.compile(rf"CREATE MATERIALIZED VIEW (?P<ine>IF NOT EXISTS )?(?P<name>{_NAME}) TO (?P<target>{_NAME})"
                   r"\s+AS\s+(?P<select>SELECT\b.*)", re.S)
_FROM = re.compile(rf"\bFROM\s+(?P<source>{_NAME})")
_ALTER = re.compile(rf"ALTER TABLE (?P<name>{_NAME}) (?P<rest>(?:ADD|DROP|MODIFY) COLUMN .*)", re.S)
_INSERT = re.compile(rf"INSERT INTO (?P<name>{_NAME})\b.*\bSELECT\b.*", re.S)
_RENAME = re.compile(rf"RENAME TABLE (?P<pairs>{_NAME} TO {_NAME}(?:,\s*{_NAME} TO {_NAME})*)", re.S)
_DROP = re.compile(rf"DROP TABLE (?P<ie>IF EXISTS )?(?P<name>{_NAME})", re.S)


class ShapeError(ValueError):
    pass


@dataclass(frozen=True)
class ClusterShape:
    """Where the migrations run as a cluster: the ClickHouse cluster of the tables (shards of
    replicas, from the servers' remote_servers) and the one of every server as its own shard."""

    cluster: str
    servers_cluster: str
    zookeeper_prefix: str = "/clickhouse/tables"

    def __post_init__(self) -> None:
        for name in (self.cluster, self.servers_cluster):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ShapeError(f"ClickHouse cluster name {name!r} is not a plain identifier")

    def render(self, statement: str, database: str) -> list[str]:
        """The statements that do on the cluster what `statement` does on one server."""
        return _Rendering(self, database).render(statement)


def configured(settings) -> ClusterShape | None:
    """The shape VIEWCOUNT_CLICKHOUSE_CLUSTER asks for: None (one server) when unset."""
    if not settings.clickhouse_cluster:
        return None
    return ClusterShape(settings.clickhouse_cluster,
                        settings.clickhouse_servers_cluster or f"{settings.clickhouse_cluster}_servers")


def for_layout(layout) -> ClusterShape:
    """The shape of the loopback cluster stack (make cluster-up; config.ClusterLayout)."""
    return ClusterShape(layout.clickhouse_cluster, layout.clickhouse_servers_cluster)


def render(statement: str, database: str, shape: ClusterShape | None) -> list[str]:
    return [statement] if shape is None else shape.render(statement, database)


def placement(table: str) -> str:
    """'sharded' or 'every server', for a table's name (in any database) as the migrations write it."""
    name = FORMER_NAMES.get(table, table)
    if name in ON_EVERY_SERVER or name == RECORD_TABLE:
        return "every server"
    if name in SHARDING_KEYS:
        return "sharded"
    raise ShapeError(f"table {table} has no place on a cluster: give it a sharding key in "
                     "pipelines/store/tables.py (SHARDING_KEYS) or list it in ON_EVERY_SERVER")


def sharding_key(table: str) -> str:
    return SHARDING_KEYS[FORMER_NAMES.get(table, table)]


def stored_table(table: str, shape: ClusterShape | None) -> str:
    """The table that holds `table`'s rows on a server: itself on one server and for a table on every
    server; `<table>_local` for a sharded table on a cluster (the Distributed table under the public
    name stores none). What moves rows in place (REPLACE / DROP PARTITION, DELETE) must name this one."""
    if shape is None or placement(table) != "sharded":
        return table
    return table + LOCAL_SUFFIX


_REPLICATED_ENGINE = re.compile(r"Replicated(?P<engine>\w*MergeTree)\('[^']*', '[^']*'(?:, (?P<args>[^()]*))?\)"
                                r"(?P<rest>\s.*)?", re.S)


def unreplicated_engine(engine_full: str) -> str:
    """The engine clause of a plain copy of a replicated table, from its `system.tables.engine_full`
    (the inverse of the rendering above: the ZooKeeper path and replica dropped, the rest kept): a
    shard's staging table for REPLACE PARTITION, which must not be a replica of anything."""
    match = _REPLICATED_ENGINE.fullmatch(engine_full.strip())
    if not match:
        raise ShapeError(f"not a replicated MergeTree engine: {engine_full!r}")
    return f"{match['engine']}({match['args'] or ''}){match['rest'] or ''}"


def _without_leading_comments(statement: str) -> str:
    lines = statement.strip().splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines).strip()


class _Rendering:
    def __init__(self, shape: ClusterShape, database: str) -> None:
        self.shape, self.database = shape, database
        self.on = f"ON CLUSTER {shape.cluster}"

    def render(self, statement: str) -> list[str]:
        text = _without_leading_comments(statement)
        for pattern, method in ((_DATABASE, self._database), (_TABLE, self._table), (_TABLE_AS, self._table_as),
                                (_VIEW, self._view), (_ALTER, self._alter), (_INSERT, self._insert),
                                (_RENAME, self._rename), (_DROP, self._drop)):
            match = pattern.fullmatch(text)
            if match:
                return method(match)
        first = text.splitlines()[0] if text else ""
        raise ShapeError(f"the cluster shape has no rendering for this statement ({first!r}...): write it in one "
                         "of the forms pipelines/store/shapes.py lists, or teach it this one")

    # names
    def _qualified(self, name: str) -> str:
        return name if "." in name else f"{self.database}.{name}"

    def _split(self, name: str) -> tuple[str, str]:
        database, table = self._qualified(name).split(".")
        return database, table

    def _sharded(self, name: str) -> bool:
        return placement(self._split(name)[1]) == "sharded"

    def _local(self, name: str) -> str:
        return self._qualified(name) + LOCAL_SUFFIX

    def _distributed(self, name: str, ine: str = "IF NOT EXISTS ") -> str:
        database, table = self._split(name)
        return (f"CREATE TABLE {ine}{database}.{table} {self.on} AS {database}.{table}{LOCAL_SUFFIX} "
                f"ENGINE = Distributed({self.shape.cluster}, {database}, {table}{LOCAL_SUFFIX}, {sharding_key(table)})")

    # forms
    def _database(self, m: re.Match) -> list[str]:
        return [f"CREATE DATABASE {m['ine'] or ''}{m['name']} {self.on}"]

    def _table(self, m: re.Match) -> list[str]:
        database, table = self._split(m["name"])
        sharded = self._sharded(m["name"])
        local = f"{table}{LOCAL_SUFFIX}" if sharded else table
        path = f"{self.shape.zookeeper_prefix}/{'{shard}' if sharded else 'all'}/{database}/{local}"
        arguments = ", ".join([f"'{path}'", "'{replica}'", *([m["args"]] if m["args"] else [])])
        rest = m["rest"] or ""
        create = (f"CREATE TABLE {m['ine'] or ''}{database}.{local} {self.on}\n({m['columns']})\n"
                  f"ENGINE = Replicated{m['engine']}({arguments}){rest}")
        return [create, self._distributed(m["name"], m["ine"] or "")] if sharded else [create]

    def _table_as(self, m: re.Match) -> list[str]:
        # Null tables (the dashboard's empty sources) and Merge tables: on every server, no rows of
        # their own; AS the public name, which has the same columns on both shapes.
        return [f"CREATE TABLE {m['ine'] or ''}{self._qualified(m['name'])} {self.on} "
                f"AS {self._qualified(m['source'])} ENGINE = {m['engine']}"]

    def _view(self, m: re.Match) -> list[str]:
        sources = _FROM.findall(m["select"])
        if len(sources) != 1:
            raise ShapeError(f"materialized view {m['name']}: the cluster shape renders a view over one table, "
                             f"found {len(sources)}")
        source = sources[0]
        database, table = self._split(source)
        fires_per_shard = database == self.database and placement(table) == "sharded"
        if fires_per_shard:
            if not self._sharded(m["target"]):
                raise ShapeError(f"materialized view {m['name']} over sharded {source} writes {m['target']}, "
                                 "which is not sharded: give it a sharding key")
            source_name, target = self._local(source), self._local(m["target"])
        else:
            source_name, target = self._qualified(source), self._qualified(m["target"])
        select = _FROM.sub(f"FROM {source_name}", m["select"], count=1)
        return [f"CREATE MATERIALIZED VIEW {m['ine'] or ''}{self._qualified(m['name'])} {self.on} TO {target}\n"
                f"AS {select}"]

    def _alter(self, m: re.Match) -> list[str]:
        if not self._sharded(m["name"]):
            # One replicated table: its replicas take the change from ZooKeeper.
            return [f"ALTER TABLE {self._qualified(m['name'])} {m['rest']}"]
        return [f"ALTER TABLE {self._local(m['name'])} {self.on} {m['rest']}",
                f"ALTER TABLE {self._qualified(m['name'])} ON CLUSTER {self.shape.servers_cluster} {m['rest']}"]

    def _insert(self, m: re.Match) -> list[str]:
        # Once, on the server the migrations run on, with the session's database: the public names
        # are the Distributed tables (and ON_EVERY_SERVER tables are replicated from here).
        return [m.group(0)]

    def _rename(self, m: re.Match) -> list[str]:
        pairs = [tuple(pair.split(" TO ")) for pair in re.split(r",\s*", m["pairs"])]
        for old, new in pairs:
            if self._sharded(old) != self._sharded(new):
                raise ShapeError(f"RENAME {old} TO {new}: both must be sharded, or both on every server")
        renames = ", ".join(f"{self._local(old) if self._sharded(old) else self._qualified(old)} TO "
                            f"{self._local(new) if self._sharded(new) else self._qualified(new)}" for old, new in pairs)
        statements = [f"RENAME TABLE {renames} {self.on}"]
        sharded = [(old, new) for old, new in pairs if self._sharded(old)]
        statements += [f"DROP TABLE IF EXISTS {self._qualified(old)} {self.on}" for old, _ in sharded]
        statements += [self._distributed(new) for _, new in sharded]
        return statements

    def _drop(self, m: re.Match) -> list[str]:
        drop = f"DROP TABLE {m['ie'] or ''}"
        statements = [f"{drop}{self._qualified(m['name'])} {self.on}"]
        if self._sharded(m["name"]):
            statements.append(f"{drop}{self._local(m['name'])} {self.on}")
        return statements
