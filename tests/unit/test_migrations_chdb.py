"""Every migration and analyst query runs on current ClickHouse too (chdb, in-process)."""

from __future__ import annotations

import json
import re

import pytest

from pipelines.repair import backfill, erasure, ledger
from pipelines.store import migrate, pseudonyms, queries
from pipelines.store.tables import EVENTS_RAW_COLUMNS

chdb = pytest.importorskip("chdb", reason="chdb is a dev dependency: make venv")


@pytest.fixture()
def session(tmp_path):
    from chdb import session as chs

    s = chs.Session(str(tmp_path / "chdb"))
    s.query("CREATE DATABASE IF NOT EXISTS viewcount")
    s.query("USE viewcount")
    yield s
    s.cleanup()


@pytest.fixture()
def migrated(session):
    """A session with every migration applied, in order."""
    for migration in migrate.migrations():
        for statement in migration.statements():
            session.query(statement)
    return session


def test_every_migration_statement_runs_on_current_clickhouse(migrated):
    tables = migrated.query("SELECT name FROM system.tables WHERE database = 'viewcount' ORDER BY name", "CSV")
    assert str(tables).split() == [f'"{name}"' for name in (
        "changed_hours", "dead_letters", "erased_viewers", "erasure_requests", "erasure_sweeps", "events_raw",
        "hour_repairs", "ledger_scans", "post_hour", "post_minute", "post_minute_changes", "post_surface_minute",
        "posts", "posts_changes", "pseudonym_key", "rollup_changes", "space_presence", "space_presence_changes",
        "subject_posts",
        "subject_refresh_state", "subject_rollup")]


def test_a_higher_version_replaces_a_window_row(migrated):
    migrated.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 5, 1, '', 5, 10)")
    migrated.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 6, 1, '', 6, 11)")
    result = migrated.query("SELECT views FROM post_minute FINAL WHERE post_id = 7", "CSV")
    assert str(result).strip() == "6"


NIGHT = {"from": "'2024-08-12 23:00:00'", "to": "'2024-08-13 03:00:00'", "subject_id": "'space-2024-08-12'",
         "grain": "'minute'", "hour_from": "'2024-08-13 00:00:00'", "hour_to": "'2024-08-13 03:00:00'",
         "day_from": "'2024-08-13 00:00:00'", "day_to": "'2024-08-13 00:00:00'"}


def _with_values(text: str, values: dict[str, str]) -> str:
    """The driver's %(name)s placeholders replaced by SQL literals (chdb has no such driver)."""
    return re.sub(r"%\((\w+)\)s", lambda m: values.get(m.group(1), "1"), text)


def _rows(session, text: str) -> list[list]:
    return json.loads(str(session.query(text, "JSONCompact")))["data"]


def test_analyst_queries_run_on_current_clickhouse_and_read_what_was_written(migrated):
    # The query API sends this one as external data alongside the query.
    migrated.query("CREATE TABLE conversation_posts (post_id UInt64) ENGINE = Memory")
    migrated.query("INSERT INTO conversation_posts VALUES (1)")
    migrated.query("INSERT INTO post_minute VALUES (1, '2024-08-12 23:47:00', 5, 2, '', 5, 10)")
    results = {path.stem: _rows(migrated, _with_values(path.read_text(), NIGHT)) for path in queries.query_files()}
    assert len(results) == len(queries.query_files()) >= 10
    assert results["post_minutes"] == [["2024-08-12 23:47:00", 5, 2, ""]]
    assert results["all_posts_totals"] == [[1, 5, 2]]
    assert results["top_posts"] == [[1, 5, 2]]


def _backfill_text(name: str, values: dict[str, str], **tables: str) -> str:
    return _with_values(backfill.backfill_sql(name, **tables), values)


def test_every_backfill_statement_runs_on_current_clickhouse(migrated):
    migrated.query(f"INSERT INTO events_raw ({', '.join(EVENTS_RAW_COLUMNS)}) VALUES "
                   "('view', 'e1', '2024-08-13 01:02:03', 1723510923000, 7, 3, 42, 'home', 'ios', ''), "
                   "('impression', 'e2', '2024-08-13 01:02:04', 1723510924000, 7, 3, 42, 'home', 'ios', 'like')")
    hour = {"from": "'2024-08-13 01:00:00'", "to": "'2024-08-13 02:00:00'", "chunks": "1", "chunk": "0",
            "version": "5", "partition": "2024081301"}
    staging = "post_surface_minute_staging_2024081301"
    migrated.query(_backfill_text("drop_staging", hour, staging=staging))
    migrated.query(_backfill_text("create_staging", hour, staging=staging, table="post_surface_minute"))
    migrated.query(_backfill_text("fill_surfaces", hour, staging=staging))
    assert _rows(migrated, _backfill_text("staging_rows", hour, staging=staging)) == [[2]]
    migrated.query(_backfill_text("replace_partition", hour, table="post_surface_minute", staging=staging))
    migrated.query(_backfill_text("drop_staging", hour, staging=staging))
    assert _rows(migrated, "SELECT surface, action, views, impressions FROM post_surface_minute ORDER BY action") == [
        ["home", "", 1, 0], ["home", "like", 0, 1]]
    assert _rows(migrated, _backfill_text("hour_size", hour)) == [[2]]
    assert _rows(migrated, _backfill_text("hours_with_events", hour)) == [["2024-08-13 01:00:00"]]
    assert _rows(migrated, _backfill_text("hour_minutes", hour)) == [[7, "2024-08-13 01:02:00", 1, 1, [42]]]
    assert _rows(migrated, _backfill_text("hour_rollups", hour)) == []
    tables = _rows(migrated, "SELECT name FROM system.tables WHERE database = 'viewcount' AND name LIKE '%staging%'")
    assert tables == []


def test_the_ledger_notes_late_rows_and_lists_pending_hours_on_current_clickhouse(migrated):
    columns = ", ".join(EVENTS_RAW_COLUMNS)
    migrated.query(f"INSERT INTO events_raw ({columns}, late) VALUES ('view', 'e1', '2024-08-13 01:02:03', "
                   "1723510923000, 7, 3, 42, 'home', 'ios', '', 1), ('view', 'e2', '2024-08-13 02:02:03', "
                   "1723514523000, 7, 3, 42, 'home', 'ios', '', 0)")
    assert _rows(migrated, ledger._sql("last_scan")) == [["1970-01-01 00:00:00"]]
    since = {"since": "'2024-01-01 00:00:00'"}
    assert _rows(migrated, _with_values(ledger._sql("late_hours"), since)) == [["2024-08-13 01:00:00", 1]]
    assert _rows(migrated, _with_values(ledger._sql("late_hours"), {"since": "now() + 60"})) == []
    migrated.query("INSERT INTO changed_hours VALUES ('2024-08-13 01:00:00', 'late', 1, '2026-01-01 00:00:10'), "
                   "('2024-08-13 03:00:00', 'erasure', 0, '2026-01-01 00:00:10')")
    migrated.query("INSERT INTO hour_repairs VALUES ('2024-08-13 03:00:00', '2026-01-01 00:00:10', "
                   "'2026-01-01 00:00:11')")
    assert _rows(migrated, ledger._sql("pending_hours")) == [["2024-08-13 01:00:00"]]


def test_the_column_registry_equals_the_migrated_schema(migrated):
    """pipelines/store/tables.py is where every table's columns are written down: each table the
    registry names has exactly those columns (plus what ClickHouse fills itself), in that order,
    and every table the migrations create is in the registry."""
    from pipelines.store.tables import FILLED_BY_CLICKHOUSE, TABLE_COLUMNS

    # The stored tables: the project database's, and the private one's (the pseudonym key, which the
    # project database reads through a Merge table of the same columns).
    rows = _rows(migrated, "SELECT table, name FROM system.columns WHERE (database, table) IN "
                           "(SELECT database, name FROM system.tables WHERE database IN ('viewcount', "
                           "'viewcount_private') AND engine LIKE '%MergeTree')")
    schema: dict[str, list[str]] = {}
    for table, name in rows:
        schema.setdefault(table, []).append(name)
    assert sorted(schema) == sorted(TABLE_COLUMNS), "a migrated table missing from the registry, or the reverse"
    for table, columns in TABLE_COLUMNS.items():
        assert schema[table] == [*columns, *FILLED_BY_CLICKHOUSE.get(table, ())], table


def test_every_view_of_clickhouse_s_kafka_consumers_names_every_column_of_its_table():
    from pipelines.store.tables import FILLED_BY_CLICKHOUSE, TABLE_COLUMNS
    from pipelines.stream import streams

    for output in streams.LOADED_BY_CLICKHOUSE:
        select = streams.view_sql(output, "q", "d").split("SELECT ", 1)[1].split("\nFROM", 1)[0]
        parts, depth, start = [], 0, 0
        for i, char in enumerate(select):  # split on the commas outside parentheses
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                parts.append(select[start:i])
                start = i + 1
        named = [part.split(" AS ")[-1].strip() for part in [*parts, select[start:]]]
        assert named == [*TABLE_COLUMNS[output.table], *FILLED_BY_CLICKHOUSE.get(output.table, ())], output.name


KEY = "0123456789abcdef"


def test_erasure_statements_run_on_current_clickhouse_and_match_python_pseudonyms(migrated):
    migrated.query(f"INSERT INTO viewcount_private.pseudonym_key (key) VALUES ('{KEY}')")
    assert _rows(migrated, _with_values(pseudonyms.SQL_DIR.joinpath("pseudonym.sql").read_text(),
                                        {"viewer_id": "42"})) == [[pseudonyms.pseudonym(KEY, 42)]]
    migrated.query(f"INSERT INTO events_raw ({', '.join(EVENTS_RAW_COLUMNS)}) VALUES "
                   "('view', 'e1', '2024-08-13 01:02:03', 1723510923000, 7, 3, 42, 'home', 'ios', ''), "
                   "('view', 'e2', '2024-08-13 01:02:04', 1723510924000, 7, 3, 43, 'home', 'ios', '')")
    migrated.query("INSERT INTO space_presence (space_id, listener_id, event_time, event_time_ms, action, event_id) "
                   "VALUES (9, 42, '2024-08-13 01:59:00', 1723514340000, 'join', 'p1')")
    migrated.query("INSERT INTO dead_letters (source_topic, source_partition, source_offset, reason, payload, "
                   "loaded_at) VALUES ('t', 0, 1, 'bad', '{\"viewer_id\": \"42\", \"x\"', now()), "
                   "('t', 0, 2, 'bad', '{\"viewer_id\": 420}', now())")
    ids = {"viewer_ids": "(42)", "heartbeat_timeout_s": "150", "table": "'events_raw'", "since": "'1970-01-01'"}
    assert _rows(migrated, _with_values(erasure._sql("viewer_hours"), ids)) == [["2024-08-13 01:00:00", 1]]
    assert sorted(_rows(migrated, _with_values(erasure._sql("listener_hours"), ids))) == [
        ["2024-08-13 01:00:00", 1], ["2024-08-13 02:00:00", 1]]
    assert _rows(migrated, _with_values(erasure._sql("dead_letter_rows"), ids)) == [[1]]
    assert _rows(migrated, _with_values(erasure._sql("presence_rows"), ids)) == [[1]]
    assert _rows(migrated, _with_values(erasure._sql("pending_mutations"), ids)) == [[0]]
    assert _rows(migrated, _with_values(erasure._sql("last_sweep"), ids)) == [["1970-01-01 00:00:00"]]
    migrated.query(f"INSERT INTO erased_viewers (viewer_key, erased_at, request_id) VALUES "
                   f"({pseudonyms.pseudonym(KEY, 42)}, now(), 'r')")
    assert _rows(migrated, _with_values(erasure._sql("returned_viewers"), ids)) == [[42]]
    hour = {"from": "'2024-08-13 01:00:00'", "to": "'2024-08-13 02:00:00'", "chunks": "1", "chunk": "0"}
    assert _rows(migrated, _backfill_text("hour_minutes", hour)) == [[7, "2024-08-13 01:02:00", 1, 0, [43]]], (
        "a rebuild counted an erased viewer")
    for name in ("delete_events", "delete_presence", "delete_dead_letters"):
        migrated.query(_with_values(erasure._sql(name), ids))
    assert _rows(migrated, "SELECT count() FROM events_raw WHERE viewer_id = 42") == [[0]]
    assert _rows(migrated, "SELECT count() FROM space_presence") == [[0]]
    assert _rows(migrated, "SELECT source_offset FROM dead_letters") == [[2]]


def test_every_statement_computes_pseudonyms_the_same_way():
    from pipelines.config import REPO_ROOT

    expression = ("reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM pseudonym_key),")
    users = [p for p in (REPO_ROOT / "sql").rglob("*.sql") if "SHA256" in p.read_text()]
    assert len(users) >= 4
    for path in users:
        text = " ".join(path.read_text().split())
        assert text.count("SHA256") == text.count(expression), f"{path}: a pseudonym computed another way"
