"""The ledger of changed hours on the real ClickHouse, no Flink: late rows in the archive (as the
job marks them) are noted by hour, and one repair run rebuilds exactly those hours, post and
subject rollups together, through the Dagster job the schedule runs."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.repair import backfill, ledger
from pipelines.store.clickhouse import EVENTS_RAW, POST_MINUTE, connect, insert_rows
from pipelines.store.tables import EVENTS_RAW_COLUMNS, POST_MINUTE_COLUMNS

pytestmark = pytest.mark.integration
SUBJECT_ROOT = 1  # config/subjects.toml: the tracked subject's root post
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
THREE_HOURS_LATE = NOW - timedelta(hours=3) + timedelta(minutes=7)
THIRTY_DAYS_OLD = NOW - timedelta(days=30) + timedelta(minutes=21)
ON_TIME = NOW - timedelta(hours=5) + timedelta(minutes=3)
STREAM_VERSION = 1_000


def _view(event_id: str, at: datetime, post_id: int = SUBJECT_ROOT, late: int = 0) -> tuple:
    return ("view", event_id, at.replace(tzinfo=None), int(at.timestamp() * 1000), post_id, 7,
            zlib.crc32(event_id.encode()) % 1000 + 1, "home", "web", "", late)


def _minute_views(client) -> dict[datetime, tuple[int, int]]:
    return {backfill.as_utc(w): (v, version) for w, v, version in client.execute(
        "SELECT window_start, views, version FROM post_minute FINAL WHERE post_id = %(p)s", {"p": SUBJECT_ROOT})}


def _subject_views(client, minute: datetime) -> int:
    found = client.execute(
        "SELECT subject_views FROM subject_rollup FINAL WHERE grain = 'minute' AND window_start = %(m)s",
        {"m": minute.replace(tzinfo=None)})
    return found[0][0] if found else 0


def _run_the_repair_job(settings) -> None:
    from dagster_project.definitions import defs
    from dagster_project.resources import ClickHouseResource

    result = defs.resolve_job_def("repair_changed_hours").execute_in_process(
        resources={"clickhouse": ClickHouseResource(url=settings.clickhouse_url)})
    assert result.success


def test_late_and_old_events_reach_post_and_subject_rollups_after_one_repair(own_stack):
    client = connect(own_stack)
    # The stream counted the on-time view (its row carries a stream version) and archived two
    # events after their windows had closed: 3 hours late and 30 days old.
    insert_rows(client, EVENTS_RAW, (*EVENTS_RAW_COLUMNS, "late"), [
        _view("on-time", ON_TIME), _view("late-3h", THREE_HOURS_LATE, late=1),
        _view("late-30d", THIRTY_DAYS_OLD, late=1), _view("late-30d-other-post", THIRTY_DAYS_OLD, 99, late=1)])
    on_time_minute = ON_TIME.replace(second=0)
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS,
                [(SUBJECT_ROOT, on_time_minute.replace(tzinfo=None), 1, 0, b"", 1.0, STREAM_VERSION)])
    before = _minute_views(client)

    _run_the_repair_job(own_stack)

    after = _minute_views(client)
    assert after[THREE_HOURS_LATE.replace(second=0)][0] == 1
    assert after[THIRTY_DAYS_OLD.replace(second=0)][0] == 1
    assert after[on_time_minute] == before[on_time_minute], "an hour not in the ledger was rebuilt"
    assert _subject_views(client, THREE_HOURS_LATE.replace(second=0)) == 1
    assert _subject_views(client, THIRTY_DAYS_OLD.replace(second=0)) == 1
    repaired = {backfill.as_utc(h) for (h,) in client.execute("SELECT hour_start FROM hour_repairs")}
    assert repaired == {backfill.hour_of(THREE_HOURS_LATE), backfill.hour_of(THIRTY_DAYS_OLD)}
    assert ledger.pending_hours(client) == []

    # A second run finds nothing new: the rescan's overlap notes the same late rows again, which
    # repairs their hours once more (the same rows), and touches no other hour.
    _run_the_repair_job(own_stack)
    assert _minute_views(client)[on_time_minute] == before[on_time_minute]
    assert ledger.pending_hours(client) == []


def test_an_hour_noted_by_hand_is_repaired_and_then_no_longer_pending(own_stack):
    client = connect(own_stack)
    hour = backfill.hour_of(ON_TIME)
    insert_rows(client, EVENTS_RAW, EVENTS_RAW_COLUMNS, [_view("erased-later", ON_TIME)[:-1]])
    assert ledger.note_hours(client, [ON_TIME], "erasure") == [hour.replace(tzinfo=None)]
    assert ledger.pending_hours(client) == [hour.replace(tzinfo=None)]
    report = ledger.repair(client, scan=False)
    assert report.hours == [hour.replace(tzinfo=None)] and report.views == 1
    assert ledger.pending_hours(client) == []
