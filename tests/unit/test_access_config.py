"""Where each ClickHouse user's password comes from: the URL, the environment, the stack's file."""

from __future__ import annotations

import pytest

from pipelines.config import CREDENTIALS_FILE, Settings
from pipelines.store import migrate

chdb = pytest.importorskip("chdb", reason="chdb is a dev dependency: make venv")


@pytest.fixture()
def stack_dir(tmp_path):
    (tmp_path / CREDENTIALS_FILE).write_text(
        "# generated\nVIEWCOUNT_CLICKHOUSE_WRITER_PASSWORD=w-file\nVIEWCOUNT_CLICKHOUSE_ANALYST_PASSWORD=a-file\n"
        "VIEWCOUNT_CLICKHOUSE_DASHBOARD_PASSWORD=d-file\n")
    return tmp_path


@pytest.fixture()
def clean_env(monkeypatch, stack_dir):
    for name in ("URL", "WRITER_PASSWORD", "ANALYST_PASSWORD", "DASHBOARD_PASSWORD", "ANALYST_USER",
                 "DASHBOARD_USER"):
        monkeypatch.delenv(f"VIEWCOUNT_CLICKHOUSE_{name}", raising=False)
    monkeypatch.setenv("VIEWCOUNT_STATE_DIR", str(stack_dir))
    return monkeypatch


def test_a_fresh_stack_reads_the_generated_passwords(clean_env):
    settings = Settings.from_env()
    assert [settings.clickhouse_as(r).password for r in ("writer", "analyst", "dashboard")] == \
        ["w-file", "a-file", "d-file"]
    assert settings.clickhouse.user == "viewcount_writer"
    assert settings.clickhouse_as("dashboard").user == "dashboard"
    assert "d-file" not in repr(settings)


def test_the_environment_and_the_url_win_over_the_file(clean_env):
    clean_env.setenv("VIEWCOUNT_CLICKHOUSE_URL", "clickhouse://pipeline:in-url@ch.internal:9000/metrics")
    clean_env.setenv("VIEWCOUNT_CLICKHOUSE_DASHBOARD_USER", "grafana")
    clean_env.setenv("VIEWCOUNT_CLICKHOUSE_DASHBOARD_PASSWORD", "d-env")
    settings = Settings.from_env()
    assert (settings.clickhouse.user, settings.clickhouse.password) == ("pipeline", "in-url")
    dashboard = settings.clickhouse_as("dashboard")
    assert (dashboard.host, dashboard.user, dashboard.password, dashboard.database) == \
        ("ch.internal", "grafana", "d-env", "metrics")
    assert dashboard.dashboard_database == "metrics_dashboard"


def test_no_file_and_no_variable_means_no_password(clean_env, tmp_path):
    clean_env.setenv("VIEWCOUNT_STATE_DIR", str(tmp_path / "elsewhere"))
    assert Settings.from_env().clickhouse_as("analyst").password == ""


def test_the_dashboard_views_read_through_on_current_clickhouse(tmp_path):
    from chdb import session as chs

    session = chs.Session(str(tmp_path / "chdb"))
    try:
        session.query("CREATE DATABASE IF NOT EXISTS viewcount")
        session.query("USE viewcount")
        for migration in migrate.migrations():
            for statement in migration.statements("viewcount"):
                session.query(statement)
        session.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 5, 1, '', 5, 10)")
        session.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 6, 1, '', 6, 11)")
        result = session.query("SELECT views FROM viewcount_dashboard.post_minute FINAL WHERE post_id = 7", "CSV")
        assert str(result).strip() == "6"
        empty = session.query("SELECT count() FROM viewcount_dashboard.post_minute_source", "CSV")
        assert str(empty).strip() == "0"  # nothing copied: the rollup rows stay in viewcount only
    finally:
        session.cleanup()
