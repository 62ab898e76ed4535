"""Every migration and analyst query runs on current ClickHouse too (chdb, in-process)."""

from __future__ import annotations

import re

import pytest

from pipelines import migrate, query

chdb = pytest.importorskip("chdb", reason="chdb is a dev dependency: make venv")


@pytest.fixture()
def session(tmp_path):
    from chdb import session as chs

    s = chs.Session(str(tmp_path / "chdb"))
    s.query("CREATE DATABASE IF NOT EXISTS viewcount")
    s.query("USE viewcount")
    yield s
    s.cleanup()


def test_every_migration_statement_runs_on_current_clickhouse(session):
    for migration in migrate.migrations():
        for statement in migration.statements():
            session.query(statement)
    tables = session.query("SELECT name FROM system.tables WHERE database = 'viewcount' ORDER BY name", "CSV")
    assert str(tables).split() == [f'"{name}"' for name in (
        "dead_letters", "events_raw", "post_hour", "post_minute", "post_minute_changes", "post_surface_minute",
        "posts", "posts_changes", "rollup_changes", "space_presence", "space_presence_changes", "subject_posts",
        "subject_refresh_state", "subject_rollup")]


def test_a_higher_version_replaces_a_window_row(session):
    for migration in migrate.migrations():
        for statement in migration.statements():
            session.query(statement)
    session.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 5, 1, '', 5, 10)")
    session.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 6, 1, '', 6, 11)")
    result = session.query("SELECT views FROM post_minute FINAL WHERE post_id = 7", "CSV")
    assert str(result).strip() == "6"


def test_analyst_queries_parse_on_current_clickhouse(session):
    for migration in migrate.migrations():
        for statement in migration.statements():
            session.query(statement)
    # The query API sends this one as external data alongside the query.
    session.query("CREATE TABLE conversation_posts (post_id UInt64) ENGINE = Memory")
    for path in query.query_files():
        text = re.sub(r"%\((\w+)\)s", lambda m: "'2024-08-12 23:47:00'" if m.group(1) in ("from", "to") else "1",
                      path.read_text())
        session.query(text)
