"""The analyst's database, `<database>_analysis`: every table of the project database an analyst
may read, under its own name, with viewer and listener ids replaced by their pseudonyms.

Analysts count and join viewers (`uniqExact(viewer_id)`, a viewer's posts, viewers who also
listened) without learning who they are: a pseudonym is the keyed hash of pipelines/store/pseudonyms.py,
and the key stays in the private database, which only the writer may use. Viewer ids are small
integers: whoever reads the key, or a statement that holds it, can reverse every pseudonym.

How, on ClickHouse 18.16 (each route tried; docs/access.md, "Pseudonymous analysis"):
- Its one access control is per database (a user's allow_databases), and it checks the rights on the
  underlying database through a plain view and through a Merge table. So the analyst may use this
  database only (and the dashboard's), never the project database.
- A table without viewer ids is read through a materialized view `TO` the project's table over an
  empty Null table (kept in the private database), as the dashboard's companion does (migration
  0020): reading such a view reads the project's table itself, with no copy and no other check.
- A table with viewer ids (PERSONAL) is a Distributed table over a view of the private database that
  selects each column with the ids replaced. The Distributed table reaches that view through the
  cluster `analysis_<database>` of the server's own configuration (stack/clickhouse/config.xml.template):
  one shard, this server, logging in as the writer, with this database as its default so that a
  table an analyst's subquery names without its database resolves here too. The analyst's profile
  sets prefer_localhost_replica = 0: without it the server reads the view in-process with the
  analyst's rights, and refuses. A read-only user may not use table functions (`remote()` is
  refused, code 164), so that cluster is reached only through these tables, and only with SELECT.
The view's definition (SHOW CREATE, for the writer only) reads the key with a scalar subquery: the
key is never in a statement's text.

`ensure` makes the database match the project's tables: run after every migration
(pipelines/store/migrate.py); a table whose columns changed is made again. 18.16 wants the cluster
when a Distributed table is created: on a server without it yet (a database migrated before the
local stack re-rendered its configuration, or a server of one's own not configured yet), the
PERSONAL tables wait, with a warning, for the next `ensure` (pipelines.stack.clickhouse_server.allow_readers runs one
once the cluster is loaded; elsewhere `viewcount migrate` again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipelines.config import analysis_database, private_database
from pipelines.store import pseudonyms
from pipelines.store.tables import DEAD_LETTERS, ERASED_VIEWERS, EVENTS_RAW, PSEUDONYM_KEY, SPACE_PRESENCE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replaced:
    """What an analyst sees in place of a column: its name, type and SQL (over the column)."""

    name: str
    type: str
    sql: str


def _pseudonym(column: str, private: str) -> Replaced:
    return Replaced(column, "UInt64", pseudonyms.expression(column, f"{private}.{PSEUDONYM_KEY}"))


# Tables with a person in them, and what replaces each such column. A dead letter's payload is
# whatever a client sent (ids, names, anything): the analyst sees its length and its reason, the
# writer (on call) the payload.
PERSONAL = {
    EVENTS_RAW: {"viewer_id": _pseudonym},
    SPACE_PRESENCE: {"listener_id": _pseudonym},
    DEAD_LETTERS: {"payload": lambda column, private: Replaced("payload_bytes", "UInt64", f"length({column})")},
}
# Never in the analyst's database: the key itself, and the erased viewers (pseudonyms of people who
# asked to be forgotten: linking them to an analyst's pseudonyms would say who asked).
WITHHELD = frozenset({PSEUDONYM_KEY, ERASED_VIEWERS})
# Tables that hold rows (materialized views, Merge, Kafka and Null tables are the project's plumbing).
_STORED = "endsWith(engine, 'MergeTree')"
PERSONAL_VIEW_SUFFIX = "_for_analysts"
# A PERSONAL table's view is named with this version: raise it when what the views select changes,
# and `ensure` makes each one again (their columns alone would not say so).
VIEW_VERSION = 1
SOURCE_SUFFIX = "_analysis_source"


def cluster_name(database: str) -> str:
    """The cluster (config.xml's remote_servers) through which the analysis database's Distributed
    tables reach the private views: this server, as the writer, the analysis database as default."""
    return f"analysis_{database}"


def has_cluster(client, database: str) -> bool:
    """Whether the server has loaded database's analysis cluster (config.xml is reloaded live)."""
    return bool(client.execute("SELECT count() FROM system.clusters WHERE cluster = %(c)s",
                               {"c": cluster_name(database)})[0][0])


def _columns(client, database: str) -> dict[str, list[tuple[str, str]]]:
    """Every table's (name, type) columns in a database, in one query."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, name, type_ in client.execute(
            "SELECT table, name, type FROM system.columns WHERE database = %(d)s", {"d": database}):
        tables.setdefault(table, []).append((name, type_))
    return tables


def _shown(database: str, table: str, columns: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The analyst's columns of a project table (its `columns`): (name, type, SQL)."""
    private = private_database(database)
    replaced = PERSONAL.get(table, {})
    shown = []
    for name, type_ in columns:
        if name in replaced:
            r = replaced[name](name, private)
            shown.append((r.name, r.type, f"{r.sql} AS {r.name}"))
        else:
            shown.append((name, type_, name))
    return shown


def _view(table: str) -> str:
    return f"{table}{PERSONAL_VIEW_SUFFIX}_v{VIEW_VERSION}"


def _distributed(database: str, table: str) -> str:
    """The engine of a PERSONAL table's analysis table (as system.tables.engine_full shows it)."""
    return f"Distributed({cluster_name(database)}, {private_database(database)}, {_view(table)})"


def _drop(client, database: str, table: str) -> None:
    private = private_database(database)
    client.execute(f"DROP TABLE IF EXISTS {analysis_database(database)}.{table}")
    for (name,) in client.execute("SELECT name FROM system.tables WHERE database = %(d)s AND startsWith(name, %(p)s)",
                                  {"d": private, "p": f"{table}{PERSONAL_VIEW_SUFFIX}"}):
        client.execute(f"DROP TABLE IF EXISTS {private}.{name}")  # this version's view, or an older one's
    client.execute(f"DROP TABLE IF EXISTS {private}.{table}{SOURCE_SUFFIX}")


def _create(client, database: str, table: str, engine: str, shown: list[tuple[str, str, str]]) -> None:
    analysis, private = analysis_database(database), private_database(database)
    if table in PERSONAL:
        # FINAL inside: a view ignores the FINAL of a query on it (tried: a repeated event counted
        # twice), so the analyst's rows are deduplicated here, as `FROM events_raw FINAL` promises.
        final = " FINAL" if engine.startswith("Replacing") else ""
        client.execute(f"CREATE VIEW {private}.{_view(table)} AS SELECT {', '.join(sql for _, _, sql in shown)} "
                       f"FROM {database}.{table}{final}")
        client.execute(f"CREATE TABLE {analysis}.{table} AS {private}.{_view(table)} "
                       f"ENGINE = {_distributed(database, table)}")
    else:
        source = f"{table}{SOURCE_SUFFIX}"
        client.execute(f"CREATE TABLE {private}.{source} AS {database}.{table} ENGINE = Null")
        client.execute(f"CREATE MATERIALIZED VIEW {analysis}.{table} TO {database}.{table} "
                       f"AS SELECT * FROM {private}.{source}")


def ensure(client, database: str) -> list[str]:
    """Make `<database>_analysis` hold every stored table of database but WITHHELD, PERSONAL ones
    pseudonymous, each with the project table's columns of now; the tables (re)made."""
    analysis, private = analysis_database(database), private_database(database)
    for name in (analysis, private):
        client.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
    sources = {name: engine for name, engine in client.execute(
        f"SELECT name, engine FROM system.tables WHERE database = %(d)s AND {_STORED}", {"d": database})
        if name not in WITHHELD}
    present = dict(client.execute("SELECT name, engine_full FROM system.tables WHERE database = %(d)s",
                                  {"d": analysis}))
    waiting = sorted(set(PERSONAL) & set(sources)) if not has_cluster(client, database) else []
    if waiting:
        log.warning("%s: no cluster %s on this server yet, so the analyst's %s wait for it (the local stack: "
                    "`make up`; a server of one's own: add it to remote_servers, docs/access.md, then "
                    "`viewcount migrate`)", analysis, cluster_name(database), ", ".join(waiting))
    project, analysed = _columns(client, database), _columns(client, analysis)
    made = []
    for table, engine in sorted(sources.items()):
        if table in waiting:
            continue
        shown = _shown(database, table, project[table])
        if (table in present and analysed.get(table) == [(n, t) for n, t, _ in shown]
                and (table not in PERSONAL or present[table] == _distributed(database, table))):
            continue
        _drop(client, database, table)
        _create(client, database, table, engine, shown)
        made.append(table)
    for table in set(present) - set(sources):
        _drop(client, database, table)
    return made
