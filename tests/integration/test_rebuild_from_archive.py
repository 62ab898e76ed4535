"""An hour rebuilt from the archive and compared with the stream's rows, on the real ClickHouse, no Flink.

The archive (events_raw) is written directly with a known hour: exact counts per post and minute,
duplicate deliveries and viewers known, so every figure below is compared exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipelines.repair import backfill, reconcile
from pipelines.rollups import sketches
from pipelines.store.clickhouse import EVENTS_RAW, POST_MINUTE, connect, insert_rows
from pipelines.store.tables import EVENTS_RAW_COLUMNS, POST_MINUTE_COLUMNS

pytestmark = pytest.mark.integration
HOUR = datetime(2024, 8, 13, 1, tzinfo=UTC)
POSTS = 40
VIEWS_PER_MINUTE = 3  # on each post, in each of the first MINUTES minutes
MINUTES = 5


def archived_events() -> list[tuple]:
    """Views of POSTS posts over MINUTES minutes, one impression a post and minute, and a
    second delivery of every tenth view (same event_id: counted once)."""
    rows = []
    for post_id in range(1, POSTS + 1):
        for minute in range(MINUTES):
            for n in range(VIEWS_PER_MINUTE):
                at = HOUR + timedelta(minutes=minute, seconds=n)
                view = ("view", f"v-{post_id}-{minute}-{n}", at, int(at.timestamp() * 1000), post_id, 7,
                        1000 + post_id * 10 + n, "home", "ios", "")
                rows.append(view)
                if n == 0 and post_id % 10 == 0:
                    rows.append(view)
            at = HOUR + timedelta(minutes=minute, seconds=30)
            rows.append(("impression", f"i-{post_id}-{minute}", at, int(at.timestamp() * 1000), post_id, 7,
                         1000 + post_id * 10, "home", "ios", "like"))
    return rows


@pytest.fixture()
def archive(own_stack):
    client = connect(own_stack)
    insert_rows(client, EVENTS_RAW, EVENTS_RAW_COLUMNS, archived_events())
    yield client
    client.disconnect()


def post_minute_rows(client) -> dict[tuple[int, datetime], tuple[int, int, bytes]]:
    rows = client.execute("SELECT post_id, window_start, views, impressions, unique_viewers_sketch "
                          "FROM post_minute FINAL", settings={"strings_as_bytes": True})
    return {(p, backfill.as_utc(w)): (v, i, s) for p, w, v, i, s in rows}


def test_an_hour_is_rebuilt_with_exact_counts_and_its_staging_tables_dropped(archive):
    report = backfill.rebuild_hour(archive, HOUR)
    assert (report.rows, report.views, report.impressions) == (
        POSTS * MINUTES, POSTS * MINUTES * VIEWS_PER_MINUTE, POSTS * MINUTES)
    assert report.figures["post_hour_rows"] == POSTS
    rows = post_minute_rows(archive)
    assert len(rows) == POSTS * MINUTES
    assert {value[:2] for value in rows.values()} == {(VIEWS_PER_MINUTE, 1)}
    estimate, low, high = sketches.estimate_with_bounds(sketches.from_bytes(rows[(1, HOUR)][2]))
    assert low <= VIEWS_PER_MINUTE <= high
    assert archive.execute("SELECT count() FROM system.tables WHERE database = currentDatabase() "
                           "AND name LIKE '%%_staging_%%'") == [(0,)]
    assert backfill.hours_with_events(archive) == [HOUR]


def test_a_rebuilt_hour_agrees_with_the_archive_and_a_drifting_row_is_counted(archive):
    backfill.rebuild_hour(archive, HOUR)
    drift = reconcile.compare_hour(archive, HOUR)
    assert drift.clean and drift.sketches_differ == 0
    assert drift.stream_rows == drift.archive_rows == POSTS * MINUTES
    (row,) = archive.execute(
        "SELECT post_id, window_start, views, impressions, unique_viewers_sketch, unique_viewers "
        "FROM post_minute FINAL WHERE post_id = 1 AND window_start = %(w)s", {"w": HOUR},
        settings={"strings_as_bytes": True})
    post_id, window_start, views, impressions, sketch, estimate = row
    insert_rows(archive, POST_MINUTE, POST_MINUTE_COLUMNS,
                [(post_id, window_start, views + 2, impressions, sketch, estimate, backfill.BACKFILL_VERSION_BASE * 2)])
    drift = reconcile.compare_hour(archive, HOUR)
    assert not drift.clean
    assert (drift.count_differences, drift.views_difference, drift.missing, drift.extra) == (1, -2, 0, 0)


def test_an_hour_read_in_many_chunks_gives_the_same_rows_as_in_one(archive, monkeypatch):
    whole = sorted(backfill.minute_rows(archive, HOUR, version=1))
    monkeypatch.setattr(backfill, "CHUNK_EVENTS", 100)
    assert backfill.hour_chunks(archive, HOUR) > 3
    assert sorted(backfill.minute_rows(archive, HOUR, version=1)) == whole
    backfill.rebuild_hour(archive, HOUR)
    drift = reconcile.compare_hour(archive, HOUR)
    assert drift.clean and drift.archive_rows == len(whole) == POSTS * MINUTES


def test_an_hour_without_events_rebuilds_empty(archive):
    report = backfill.rebuild_hour(archive, HOUR - timedelta(hours=5))
    assert (report.rows, report.views, report.impressions) == (0, 0, 0)
    assert reconcile.compare_hour(archive, HOUR - timedelta(hours=5)).stream_rows == 0
