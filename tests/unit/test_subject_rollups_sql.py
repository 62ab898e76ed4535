"""The subject rollups' SQL runs on current ClickHouse too (chdb), and their pure parts behave."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from pipelines.rollups import subject_rollups, subject_rows
from pipelines.serve import figures_from_rollups
from pipelines.serve.figures_from_rollups import grain_bounds
from pipelines.store import migrate, queries
from pipelines.store.tables import SUBJECT_ROLLUP, TABLE_COLUMNS

chdb = pytest.importorskip("chdb", reason="chdb is a dev dependency: make venv")

VALUES = {
    "subject_id": "'space-2024-08-12'", "grain": "'minute'", "root_post_id": "1", "space_id": "1", "limit": "10",
    "post_ids": "(1, 2)", "post_id_array": "[1, 2]", "minutes": "('2024-08-12 23:47:00')",
}


def _value(name: str) -> str:
    return VALUES.get(name, "'2024-08-12 23:47:00'")  # every other parameter is a time


def _filled(text: str) -> str:
    """A statement with its %(name)s parameters replaced by test values."""
    return re.sub(r"%\((\w+)\)s", lambda m: _value(m.group(1)), text)


@pytest.fixture()
def session(tmp_path):
    from chdb import session as chs

    s = chs.Session(str(tmp_path / "chdb"))
    s.query("CREATE DATABASE IF NOT EXISTS viewcount")
    s.query("USE viewcount")
    for migration in migrate.migrations():
        for statement in migration.statements():
            s.query(statement)
    yield s
    s.cleanup()


def test_every_subject_rollup_statement_runs_on_current_clickhouse(session):
    paths = sorted(subject_rows.SQL_DIR.glob("*.sql")) + sorted(queries.QUERIES_DIR.glob("subject_*.sql"))
    assert len(paths) >= 14
    for path in paths:
        session.query(_filled(path.read_text()))


def test_the_rollup_reads_return_the_registry_s_columns_in_its_order(session):
    """subject_rows.existing_rows and figures_from_rollups.subject_rollup_rows name the columns of
    rollup_rows.sql and subject_headline.sql by the registry: the statements must return exactly those."""
    assert subject_rows.ROLLUP_COLUMNS == figures_from_rollups.ROLLUP_COLUMNS == TABLE_COLUMNS[SUBJECT_ROLLUP]
    for text in (subject_rows.sql("rollup_rows"), queries.query_text("subject_headline")):
        result = json.loads(str(session.query(_filled(text), "JSONCompact")))
        assert [column["name"] for column in result["meta"]] == list(TABLE_COLUMNS[SUBJECT_ROLLUP])


def test_an_insert_into_post_minute_is_recorded_as_a_change(session):
    session.query("INSERT INTO post_minute VALUES (7, '2024-08-12 23:47:00', 5, 1, '', 5, 10)")
    result = session.query("SELECT source, key, window_start FROM rollup_changes", "CSV")
    assert str(result).strip() == '"post_minute",7,"2024-08-12 23:47:00"'


def test_grain_bounds_cover_a_range_with_whole_days_hours_and_minute_edges():
    b = grain_bounds(datetime(2024, 8, 12, 23, 47, tzinfo=UTC), datetime(2024, 8, 15, 2, 47, tzinfo=UTC))
    assert (b["hour_from"], b["day_from"], b["day_to"], b["hour_to"]) == (
        datetime(2024, 8, 13), datetime(2024, 8, 13), datetime(2024, 8, 15), datetime(2024, 8, 15, 2))
    short = grain_bounds(datetime(2024, 8, 13, 0, 13, tzinfo=UTC), datetime(2024, 8, 13, 0, 50, tzinfo=UTC))
    edges = {short[name] for name in ("hour_from", "hour_to", "day_from", "day_to")}
    assert edges == {datetime(2024, 8, 13, 0, 50)}


def test_a_longer_window_adds_counts_unions_sketches_and_keeps_the_listener_peak():
    from pipelines.rollups import sketches

    def minute(m: int, viewers: list[int], listeners: int, total: int) -> dict:
        row = dict.fromkeys(subject_rows.COUNT_COLUMNS, 1)
        row.update(window_start=datetime(2024, 8, 13, 0, m), posts_total=total, listeners=listeners,
                   peak_minute=datetime(2024, 8, 13, 0, m),
                   unique_viewers_sketch=sketches.to_bytes(sketches.sketch_of(viewers)),
                   unique_listeners_sketch=sketches.to_bytes(sketches.sketch_of([listeners])))
        return row

    parts = [minute(0, [1, 2], 5, 3), minute(1, [2, 3], 9, 4)]
    hour = subject_rows.combine("s", "hour", datetime(2024, 8, 13), parts)
    assert (hour["subject_views"], hour["listeners"], hour["posts_total"]) == (2, 9, 4)
    assert hour["peak_minute"] == datetime(2024, 8, 13, 0, 1)
    assert round(sketches.from_bytes(hour["unique_viewers_sketch"]).get_estimate()) == 3


class _ChdbClient:
    """Enough of clickhouse-driver's client for statements with string parameters, on chdb."""

    def __init__(self, session):
        self.session = session

    def execute(self, statement: str, params: dict[str, str | int] | None = None) -> list[tuple]:
        for name, value in (params or {}).items():
            literal = str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"
            statement = statement.replace(f"%({name})s", literal)
        text = str(self.session.query(statement, "TabSeparated")).strip()
        return [tuple(line.split("\t")) for line in text.splitlines()] if text else []


def test_the_change_log_keeps_what_a_subject_has_still_to_read_and_drops_older_days(session):
    for day in ("2024-08-10", "2024-08-11", "2024-08-12", "2024-08-14"):
        session.query(f"INSERT INTO rollup_changes VALUES ('posts', 1, '{day} 00:00:00', '{day} 12:00:00')")
    behind, ahead = (subject_rollups.RefreshReport(s, full=False) for s in ("behind", "ahead"))
    behind.read_to, ahead.read_to = datetime(2024, 8, 14, 1), datetime(2024, 8, 20)
    client = _ChdbClient(session)
    assert subject_rollups.prune_changes(client, [behind, ahead]) == ["20240810", "20240811"]
    assert subject_rollups.prune_changes(client, [behind, ahead]) == []
    days = client.execute("SELECT toString(toDate(changed_at)) FROM rollup_changes ORDER BY changed_at")
    assert days == [("2024-08-12",), ("2024-08-14",)]


def test_a_long_refresh_makes_the_next_one_wait_longer_and_a_quick_one_keeps_the_interval(monkeypatch):
    """Refreshes that take milliseconds come every second; one that took 2 s is followed by
    2 s x (1 / REFRESH_SHARE - 1) without one (the refreshes take at most that share of the runner's time)."""
    now = [100.0]
    took = iter([2.0, 0.01, 0.01])
    after_long = 2.0 * (1 / subject_rollups.REFRESH_SHARE - 1)

    def fake_refresh(client):
        now[0] += next(took)
        return []

    monkeypatch.setattr(subject_rollups, "refresh", fake_refresh)
    timer = subject_rollups.RefreshTimer(client=None, clock=lambda: now[0])
    assert timer.maybe()  # the first refresh is due at once; it takes 2 s
    now[0] += after_long - 0.1
    assert not timer.maybe(), f"due only {after_long:.0f} s after a refresh of 2 s"
    now[0] += 0.2
    assert timer.maybe()  # takes 0.01 s
    now[0] += 0.9
    assert not timer.maybe(), "a quick refresh keeps the 1 s interval"
    now[0] += 0.2
    assert timer.maybe()


def test_while_the_job_catches_up_the_refreshes_take_a_twentieth_of_the_runner_and_after_it_their_share(monkeypatch):
    """A refresh of 1 s during a catch-up is followed by 19 s without one; the same after the
    job has read its backlog, by 1 / REFRESH_SHARE - 1 s."""
    now = [100.0]
    after = 1 / subject_rollups.REFRESH_SHARE - 1

    def fake_refresh(client):
        now[0] += 1.0
        return []

    monkeypatch.setattr(subject_rollups, "refresh", fake_refresh)
    timer = subject_rollups.RefreshTimer(client=None, clock=lambda: now[0])
    timer.catching_up = True
    assert timer.maybe()
    now[0] += 18.9
    assert not timer.maybe(), "due only 19 s (1 / 0.05 - 1 times 1 s) after a refresh of 1 s"
    now[0] += 0.2
    assert timer.maybe()
    timer.catching_up = False
    now[0] += max(after, 1.0) - 0.1
    assert not timer.maybe()
    now[0] += 0.2
    assert timer.maybe()
