"""ClickHouse on the real server: migrations, users, idempotent rows, errors a user can act on."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from clickhouse_driver import errors as ch_errors

from pipelines.store import migrate
from pipelines.store.clickhouse import POST_MINUTE, ClickHouseUnavailable, connect, connect_analyst, insert_rows
from pipelines.store.tables import POST_MINUTE_COLUMNS

pytestmark = pytest.mark.integration
WINDOW = datetime(2024, 8, 12, 23, 47, tzinfo=UTC)
POST = 10**12  # no generated night has a post this high: the session database is shared


def test_migrating_twice_applies_nothing_the_second_time(stack_settings, clickhouse):
    admin = connect(stack_settings, database="default")
    assert migrate.apply_migrations(admin, stack_settings.clickhouse.database) == []
    recorded = clickhouse.execute("SELECT name FROM schema_migrations ORDER BY version")
    assert [r[0] for r in recorded] == [m.name for m in migrate.migrations()]


def test_a_changed_migration_is_refused(stack_settings, clickhouse, tmp_path):
    changed = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, changed)
    first = sorted(changed.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    admin = connect(stack_settings, database="default")
    with pytest.raises(migrate.MigrationError, match="frozen"):
        migrate.apply_migrations(admin, stack_settings.clickhouse.database, directory=changed)


def test_a_re_emitted_window_replaces_the_row_instead_of_adding(clickhouse):
    insert_rows(clickhouse, POST_MINUTE, POST_MINUTE_COLUMNS, [(POST, WINDOW, 5, 1, b"", 5.0, 10)])
    insert_rows(clickhouse, POST_MINUTE, POST_MINUTE_COLUMNS, [(POST, WINDOW, 7, 1, b"", 7.0, 12)])
    insert_rows(clickhouse, POST_MINUTE, POST_MINUTE_COLUMNS, [(POST, WINDOW, 7, 1, b"", 7.0, 12)])  # a repeat
    assert clickhouse.execute("SELECT views FROM post_minute FINAL WHERE post_id = %(post)s", {"post": POST}) == [(7,)]


def test_the_analyst_can_read_but_not_write(stack_settings, clickhouse):
    insert_rows(clickhouse, POST_MINUTE, POST_MINUTE_COLUMNS, [(POST + 1, WINDOW, 3, 2, b"", 3.0, 1)])
    analyst = connect_analyst(stack_settings)
    assert analyst.execute("SELECT views, impressions FROM post_minute FINAL WHERE post_id = %(post)s",
                           {"post": POST + 1}) == [(3, 2)], "the analyst reads what the pipeline wrote"
    with pytest.raises(ch_errors.ServerException) as denied:
        analyst.execute("CREATE TABLE sneaky (a UInt8) ENGINE = Memory")
    assert denied.value.code == 164  # READONLY
    with pytest.raises(ch_errors.ServerException):
        analyst.execute("INSERT INTO post_minute (post_id) VALUES", [(1,)])


def test_an_unreachable_server_says_what_to_do(stack_settings):
    wrong = replace(stack_settings, clickhouse_url="clickhouse://viewcount_writer@127.0.0.1:1/viewcount")
    with pytest.raises(ClickHouseUnavailable, match="make up"):
        connect(wrong)


def test_a_wrong_password_says_which_user(stack_settings):
    with pytest.raises(ClickHouseUnavailable, match="rejected user analyst"):
        connect(stack_settings, user="analyst", password="not-the-password")


def test_only_pipeline_tables_can_be_written(clickhouse):
    with pytest.raises(ValueError, match="not a table the pipeline writes"):
        insert_rows(clickhouse, "system.users", ("name",), [("x",)])
