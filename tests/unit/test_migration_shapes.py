"""The migrations' two shapes, rendered without a server: one server gets the files' statements
unchanged; a cluster gets replicated `_local` tables and Distributed tables under the public names,
every statement naming its database and running ON CLUSTER (tests/cluster/test_cluster_schema.py
runs them on the cluster stack)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from pipelines.config import Settings
from pipelines.store import migrate, shapes
from pipelines.store.tables import ON_EVERY_SERVER, SHARDING_KEYS, TABLE_COLUMNS

DATABASE = "vc_shape"
SHAPE = shapes.ClusterShape("viewcount", "viewcount_servers")
_DDL_NAME = re.compile(r"^(?:CREATE TABLE|CREATE MATERIALIZED VIEW|ALTER TABLE|DROP TABLE|CREATE DATABASE)"
                       r"(?: IF (?:NOT )?EXISTS)? (\S+)")


def _rendered() -> list[str]:
    return [statement for m in migrate.migrations() for statement in m.statements(DATABASE, SHAPE)]


def _file_statements(migration: migrate.Migration) -> list[str]:
    """The file's statements as one server runs them, split here independently of the renderer."""
    text = (migration.text.replace("${dashboard_database}", f"{DATABASE}_dashboard")
            .replace("${private_database}", f"{DATABASE}_private"))
    parts = [part.strip() for part in re.split(r"^\s*;\s*$", text, flags=re.MULTILINE)]
    return [part for part in parts if any(line.strip() and not line.strip().startswith("--")
                                          for line in part.splitlines())]


def test_one_server_runs_every_statement_exactly_as_the_files_write_it():
    for migration in migrate.migrations():
        written = _file_statements(migration)
        assert migration.statements(DATABASE) == written, migration.path.name
        assert migration.statements(DATABASE, None) == written, migration.path.name
        for statement in written:
            assert shapes.render(statement, DATABASE, None) == [statement]


def test_unset_cluster_setting_means_one_server_and_a_set_one_names_both_clusters():
    assert shapes.configured(Settings()) is None
    assert shapes.configured(replace(Settings(), clickhouse_cluster="viewcount")) == SHAPE
    assert shapes.configured(replace(Settings(), clickhouse_cluster="prod", clickhouse_servers_cluster="each")) == (
        shapes.ClusterShape("prod", "each"))
    with pytest.raises(shapes.ShapeError, match="not a plain identifier"):
        shapes.ClusterShape("prod; DROP", "each")


def test_every_sharded_table_is_replicated_locally_and_distributed_under_its_own_name_by_its_key():
    statements = _rendered()
    sharded = [table for table in TABLE_COLUMNS if table not in ON_EVERY_SERVER]
    assert sorted(sharded) == sorted(SHARDING_KEYS)
    for table in sharded:
        made = f"CREATE TABLE IF NOT EXISTS {DATABASE}.{table}_local ON CLUSTER viewcount\n("
        local = [s for s in statements if s.startswith(made)]
        assert len(local) == 1, table
        assert ("ENGINE = Replicated" in local[0] and
                f"MergeTree('/clickhouse/tables/{{shard}}/{DATABASE}/{table}_local', '{{replica}}'" in local[0]), table
        distributed = (f"{DATABASE}.{table} ON CLUSTER viewcount AS {DATABASE}.{table}_local ENGINE = "
                       f"Distributed(viewcount, {DATABASE}, {table}_local, {SHARDING_KEYS[table]})")
        assert any(s.endswith(distributed) for s in statements), table


def test_the_post_keyed_tables_share_one_key():
    for table in ("events_raw", "post_minute", "post_hour", "post_surface_minute", "posts", "subject_posts"):
        assert SHARDING_KEYS[table] == "cityHash64(post_id)", table


def test_every_server_tables_are_one_replicated_table_with_every_server_a_replica():
    statements = _rendered()
    for database, table in ((DATABASE, "erased_viewers"), (f"{DATABASE}_private", "pseudonym_key")):
        made = [s for s in statements if s.startswith(f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER")]
        assert len(made) == 1 and f"MergeTree('/clickhouse/tables/all/{database}/{table}', '{{replica}}')" in made[0]
        assert not any(f"{database}.{table}_local" in s for s in statements)
    # The project database reads the key through a Merge table on every server, as on one server.
    assert (f"CREATE TABLE {DATABASE}.pseudonym_key ON CLUSTER viewcount AS {DATABASE}_private.pseudonym_key "
            f"ENGINE = Merge('{DATABASE}_private', '^pseudonym_key$')") in statements


def test_every_schema_statement_runs_on_the_cluster_and_names_its_database():
    for statement in _rendered():
        if statement.startswith("INSERT"):
            continue  # data: once, through the Distributed tables, from the session's database
        name = _DDL_NAME.match(statement) or re.match(r"RENAME TABLE (\S+)", statement)
        assert name, statement
        assert " ON CLUSTER viewcount" in statement, statement
        if not statement.startswith("CREATE DATABASE"):
            assert "." in name.group(1), statement
        for source in re.findall(r"\bFROM (\S+)", statement):
            assert "." in source, statement
        assert "engine = merge" in statement.lower() or "${" not in statement


def test_change_views_fire_on_the_shard_the_row_lands_on_and_dashboard_views_read_every_shard():
    statements = _rendered()
    for view, source in (("post_minute_changes", "post_minute"), ("posts_changes", "posts"),
                         ("space_presence_changes", "space_presence")):
        made = next(s for s in statements if s.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}.{view} "))
        assert f" TO {DATABASE}.rollup_changes_local\n" in made and f"FROM {DATABASE}.{source}_local" in made
    for table in ("post_minute", "post_hour", "post_surface_minute", "posts", "subject_rollup", "subject_posts",
                  "subject_refresh_state"):
        made = next(s for s in statements
                    if s.startswith(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}_dashboard.{table} "))
        assert f" TO {DATABASE}.{table}\n" in made and f"FROM {DATABASE}_dashboard.{table}_source" in made


def test_a_column_is_added_to_the_replicated_tables_and_to_every_distributed_table():
    statements = _rendered()
    assert statements.count(f"ALTER TABLE {DATABASE}.events_raw_local ON CLUSTER viewcount ADD COLUMN late UInt8 "
                            "DEFAULT 0, ADD COLUMN loaded_at DateTime DEFAULT now()") == 1
    assert statements.count(f"ALTER TABLE {DATABASE}.events_raw ON CLUSTER viewcount_servers ADD COLUMN late UInt8 "
                            "DEFAULT 0, ADD COLUMN loaded_at DateTime DEFAULT now()") == 1
    assert shapes.ClusterShape("c", "s").render("ALTER TABLE erased_viewers ADD COLUMN note String", DATABASE) == [
        f"ALTER TABLE {DATABASE}.erased_viewers ADD COLUMN note String"], "one replicated table: ZooKeeper carries it"


def test_a_renamed_table_gets_a_distributed_table_naming_its_new_local_table():
    swap = next(m for m in migrate.migrations() if m.name == "dead_letters_by_day").statements(DATABASE, SHAPE)
    rename = swap.index(f"RENAME TABLE {DATABASE}.dead_letters_local TO {DATABASE}.dead_letters_unpartitioned_local, "
                        f"{DATABASE}.dead_letters_by_day_local TO {DATABASE}.dead_letters_local ON CLUSTER viewcount")
    after = swap[rename + 1:]
    remade = f"CREATE TABLE IF NOT EXISTS {DATABASE}.dead_letters ON CLUSTER"
    assert after.index(f"DROP TABLE IF EXISTS {DATABASE}.dead_letters ON CLUSTER viewcount") < next(
        i for i, s in enumerate(after) if s.startswith(remade))
    assert any(s.endswith(f"Distributed(viewcount, {DATABASE}, dead_letters_local, "
                          "cityHash64(source_topic, source_partition, source_offset))") for s in after)
    assert swap[-2:] == [f"DROP TABLE {DATABASE}.dead_letters_unpartitioned ON CLUSTER viewcount",
                         f"DROP TABLE {DATABASE}.dead_letters_unpartitioned_local ON CLUSTER viewcount"]


def test_a_statement_of_an_unknown_form_is_refused_naming_its_migration(tmp_path):
    (tmp_path / "0001_tidy.sql").write_text("-- merge now\nOPTIMIZE TABLE post_minute FINAL\n")
    (migration,) = migrate.migrations(tmp_path)
    assert migration.statements(DATABASE) == ["-- merge now\nOPTIMIZE TABLE post_minute FINAL"]
    with pytest.raises(migrate.MigrationError, match=r"0001_tidy.sql, statement 1: .*no rendering.*OPTIMIZE"):
        migration.statements(DATABASE, SHAPE)


def test_a_table_without_a_place_on_the_cluster_is_refused():
    with pytest.raises(shapes.ShapeError, match="SHARDING_KEYS"):
        SHAPE.render("CREATE TABLE IF NOT EXISTS scratch (a UInt8) ENGINE = MergeTree ORDER BY a", DATABASE)


class _RecordingClient:
    """A stand-in for clickhouse-driver's Client: records each statement and its settings, answers
    the migrator's reads as a fresh database would (no record, a pseudonym key table present)."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, dict | None]] = []

    def execute(self, query, params=None, settings=None):
        self.executed.append((query, settings))
        if query.startswith("SELECT version"):
            return []
        if query.startswith("SELECT count() FROM system.tables"):
            return [(1,)]
        if "min(key)" in query:
            return [("0" * 64,)]
        if query.startswith("SELECT name, engine FROM system.tables") and params["d"].endswith("_queues"):
            return [("events_raw_queue", "Kafka"), ("events_raw_loader", "MaterializedView")]
        return []


def test_on_a_cluster_the_migrator_runs_the_rendered_statements_with_synchronous_distributed_inserts():
    client = _RecordingClient()
    applied = migrate.apply_migrations(client, DATABASE, shape=SHAPE)
    assert applied == [m.path.name for m in migrate.migrations()]
    executed = [sql for sql, _ in client.executed]
    assert executed[:2] == [f"CREATE DATABASE IF NOT EXISTS {DATABASE} ON CLUSTER viewcount",
                            f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations ON CLUSTER viewcount\n"
                            "(version UInt32, name String, checksum String, applied_at DateTime)\n"
                            f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{DATABASE}/schema_migrations', "
                            "'{replica}') ORDER BY version"]
    migration_statements = [(sql, settings) for sql, settings in client.executed
                            if sql in set(_rendered())]
    assert [sql for sql, _ in migration_statements] == _rendered()
    assert all(settings == {"insert_distributed_sync": 1} for _, settings in migration_statements)
    assert not any("_analysis" in sql for sql in executed), "the analyst's database is not made on a cluster yet"
    drops = _RecordingClient()
    migrate.drop_database(drops, DATABASE, SHAPE)
    queues = f"{DATABASE}_queues"
    assert [sql for sql, _ in drops.executed if sql.startswith("DROP")] == [
        f"DROP DATABASE IF EXISTS {DATABASE}_dashboard ON CLUSTER viewcount",
        f"DROP DATABASE IF EXISTS {DATABASE}_analysis ON CLUSTER viewcount",
        # The consumer's view, then the consumer (one Kafka table at a time), then its database.
        f"DROP TABLE IF EXISTS {queues}.`events_raw_loader` ON CLUSTER viewcount",
        f"DROP TABLE IF EXISTS {queues}.`events_raw_queue` ON CLUSTER viewcount",
        f"DROP DATABASE IF EXISTS {queues} ON CLUSTER viewcount",
        f"DROP DATABASE IF EXISTS {DATABASE} ON CLUSTER viewcount",
        f"DROP DATABASE IF EXISTS {DATABASE}_private ON CLUSTER viewcount"]
