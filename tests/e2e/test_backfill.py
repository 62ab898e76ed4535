"""Backfills through Dagster agree with the stream: on the real Kafka, Flink job and ClickHouse.

A small night (1:20,000) runs through the stream once per module; then one hour is rebuilt
from the archive with `dagster.materialize(partition_key=...)` and compared with the stream's
rows window by window: on-time windows byte for byte, windows with late events (the night's
own, plus one archived after the stream closed its window) at the archive's exact counts.

The module has its own topics and database (derived from the session's): the end-to-end module
produces its own night into the session's topics, and two nights in one topic would mix.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import connected, module_namespace

pytestmark = pytest.mark.e2e
SCALE = 20_000
SEED = 4242
LATE_VIEWER = 10**15  # a viewer no generated night has
LATE_EVENT_ID = "archived-after-the-stream-closed-its-window"


settings = module_namespace("backfill")  # this module's topics and database on the session's services


@pytest.fixture(scope="module")
def client(settings):
    with connected(settings) as c:
        yield c


@pytest.fixture(scope="module")
def night(settings, client):
    """The night through the stream; returns the ground truth and the stream's rows."""
    from pipelines.reference.generator import generate_night
    from pipelines.stream.runner import run_pipeline

    truth = generate_night(settings, scale=SCALE, seed=SEED)
    run_pipeline(settings, bounded=True)
    return truth, post_minute_rows(client)


@pytest.fixture(scope="module")
def dagster_resources(settings):
    from dagster_project.resources import ClickHouseResource

    return {"clickhouse": ClickHouseResource(url=settings.clickhouse_url)}


def materialize(asset, hour: datetime, dagster_resources):
    import dagster as dg

    result = dg.materialize([asset], partition_key=f"{hour:%Y-%m-%d-%H:00}", resources=dagster_resources)
    assert result.success
    return result


def check_passed(result) -> tuple[bool, dict]:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


def post_minute_rows(client) -> dict[tuple[int, str], tuple[int, int, bytes]]:
    rows = client.execute("SELECT post_id, toString(window_start), views, impressions, unique_viewers_sketch "
                          "FROM post_minute FINAL", settings={"strings_as_bytes": True})
    return {(p, w.decode()): (v, i, s) for p, w, v, i, s in rows}


def in_hour(key: tuple[int, str], hour: datetime) -> bool:
    return key[1].startswith(f"{hour:%Y-%m-%d %H}:")


@pytest.fixture(scope="module")
def backfilled_hour(night, client, dagster_resources):
    """The busiest hour after one view was archived too late for the stream: the reconciliation
    before, then the hour rebuilt through Dagster, and every row after."""
    from dagster_project.assets import post_minute_reconciliation, post_minute_rollups
    from pipelines.store.clickhouse import EVENTS_RAW, insert_rows
    from pipelines.store.tables import EVENTS_RAW_COLUMNS

    truth, before = night
    views_by_hour: dict[str, int] = {}
    for row in truth.post_minutes:
        views_by_hour[row.window_start[:13]] = views_by_hour.get(row.window_start[:13], 0) + row.views
    hour = datetime.strptime(max(views_by_hour, key=views_by_hour.get), "%Y-%m-%d %H").replace(tzinfo=UTC)
    # The busiest on-time window of the hour gets one more view, straight into the archive.
    post_id, window = max(((r.post_id, r.window_start) for r in truth.post_minutes
                           if in_hour((r.post_id, r.window_start), hour) and not r.has_late_events),
                          key=lambda key: before[key][0])
    ((author_id,),) = client.execute("SELECT any(author_id) FROM events_raw WHERE post_id = %(p)s", {"p": post_id})
    moment = datetime.strptime(window, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) + timedelta(seconds=30)
    insert_rows(client, EVENTS_RAW, EVENTS_RAW_COLUMNS, [
        ("view", LATE_EVENT_ID, moment, int(moment.timestamp() * 1000), post_id, author_id, LATE_VIEWER,
         "home", "ios", "")])
    reconciliation = materialize(post_minute_reconciliation, hour, dagster_resources)
    rollups = materialize(post_minute_rollups, hour, dagster_resources)
    return hour, (post_id, window), reconciliation, rollups, post_minute_rows(client)


def test_an_on_time_window_is_rebuilt_byte_for_byte_as_the_stream_wrote_it(night, backfilled_hour):
    truth, before = night
    hour, seeded, _, _, after = backfilled_hour
    late = {(r.post_id, r.window_start) for r in truth.post_minutes if r.has_late_events}
    on_time = [key for key in before if in_hour(key, hour) and key not in late and key != seeded]
    assert len(on_time) > 1000
    changed = [key for key in on_time if after[key] != before[key]]
    assert changed == [], f"{len(changed)} on-time windows changed, e.g. {changed[:3]}"


def test_late_events_are_counted_exactly_after_the_backfill_of_their_hour(night, backfilled_hour):
    truth, before = night
    hour, seeded, _, rollups, after = backfilled_hour
    expected = {(r.post_id, r.window_start): (r.views, r.impressions) for r in truth.post_minutes
                if in_hour((r.post_id, r.window_start), hour)}
    expected[seeded] = (expected[seeded][0] + 1, expected[seeded][1])
    got = {key: value[:2] for key, value in after.items() if in_hour(key, hour)}
    assert got == expected
    assert before[seeded][0] == expected[seeded][0] - 1, "the stream could not have seen the archived view"
    assert after[seeded][2] != before[seeded][2], "the new viewer is in the rebuilt sketch"
    metadata = rollups.asset_materializations_for_node("post_minute_rollups")[0].metadata
    assert metadata["rows"].value == len(expected)
    assert metadata["views"].value == sum(v for v, _ in expected.values())
    assert metadata["impressions"].value == sum(i for _, i in expected.values())


def test_a_backfill_leaves_every_other_hour_untouched(night, backfilled_hour):
    _, before = night
    hour, _, _, _, after = backfilled_hour
    assert {k: v for k, v in after.items() if not in_hour(k, hour)} == \
        {k: v for k, v in before.items() if not in_hour(k, hour)}


def test_a_second_backfill_of_the_hour_changes_nothing(backfilled_hour, client, dagster_resources):
    from dagster_project.assets import post_minute_rollups

    hour, _, _, _, after = backfilled_hour
    versions = client.execute("SELECT DISTINCT version FROM post_minute FINAL WHERE toStartOfHour(window_start) = "
                              "%(h)s", {"h": hour})
    materialize(post_minute_rollups, hour, dagster_resources)
    assert post_minute_rows(client) == after
    ((version,),) = versions
    ((again,),) = client.execute("SELECT DISTINCT version FROM post_minute FINAL WHERE toStartOfHour(window_start) = "
                                 "%(h)s", {"h": hour})
    assert again >= version, "a later rebuild never ranks below an earlier one"


def test_the_reconciliation_flagged_the_late_archived_view_and_passes_after_the_backfill(
        night, backfilled_hour, dagster_resources):
    from dagster_project.assets import post_minute_reconciliation

    truth, before = night
    hour, _, reconciliation, _, after = backfilled_hour
    passed, metadata = check_passed(reconciliation)
    assert not passed
    # The archive has every event; the stream missed the seeded view and whatever late events
    # came behind its watermark: the views difference is exactly that.
    hour_truth = sum(r.views for r in truth.post_minutes if in_hour((r.post_id, r.window_start), hour)) + 1
    assert metadata["views_difference"] == hour_truth - sum(v[0] for k, v in before.items() if in_hour(k, hour))
    assert metadata["count_differences"] >= 1
    passed, metadata = check_passed(materialize(post_minute_reconciliation, hour, dagster_resources))
    assert passed, metadata
    assert metadata["count_differences"] == metadata["missing_windows"] == metadata["extra_windows"] == 0
    assert metadata["stream_rows"] == metadata["archive_rows"] == sum(1 for k in after if in_hour(k, hour))


def test_the_reconciliation_check_fails_on_a_seeded_drift_and_a_backfill_mends_it(
        backfilled_hour, client, dagster_resources):
    from dagster_project.assets import post_minute_reconciliation, post_minute_rollups
    from pipelines.repair.backfill import BACKFILL_VERSION_BASE
    from pipelines.store.clickhouse import POST_MINUTE, insert_rows
    from pipelines.store.tables import POST_MINUTE_COLUMNS

    hour, _, _, _, _ = backfilled_hour  # rebuilt, so the stream and the archive agree exactly
    assert check_passed(materialize(post_minute_reconciliation, hour, dagster_resources))[0]
    (row,) = client.execute(
        "SELECT post_id, window_start, views, impressions, unique_viewers_sketch, unique_viewers "
        "FROM post_minute FINAL WHERE toStartOfHour(window_start) = %(h)s ORDER BY views DESC, post_id LIMIT 1",
        {"h": hour}, settings={"strings_as_bytes": True})
    post_id, window_start, views, impressions, sketch, estimate = row
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS,
                [(post_id, window_start, views + 1, impressions, sketch, estimate, BACKFILL_VERSION_BASE * 2)])
    passed, metadata = check_passed(materialize(post_minute_reconciliation, hour, dagster_resources))
    assert not passed
    assert (metadata["count_differences"], metadata["views_difference"]) == (1, -1)
    assert metadata["drifting_hours"] == f"{hour:%Y-%m-%d %H}:00"
    # REPLACE PARTITION swaps the whole hour, so even a row that outranks every backfill goes.
    materialize(post_minute_rollups, hour, dagster_resources)
    passed, metadata = check_passed(materialize(post_minute_reconciliation, hour, dagster_resources))
    assert passed, metadata


def test_an_hour_rebuilds_in_one_chunk_or_many_with_the_same_rows(backfilled_hour, client, monkeypatch):
    from pipelines.repair import backfill, reconcile

    hour, _, _, _, _ = backfilled_hour
    whole = list(backfill.minute_rows(client, hour, version=1))
    monkeypatch.setattr(backfill, "CHUNK_EVENTS", 1_000)
    assert backfill.hour_chunks(client, hour) > 3
    chunked = sorted(backfill.minute_rows(client, hour, version=1))
    assert chunked == sorted(whole)
    drift = reconcile.compare_hour(client, hour)
    assert drift.clean and drift.sketches_differ == 0 and drift.stream_rows == len(whole)


def test_a_backfill_of_an_hour_without_events_empties_it(night, client):
    from pipelines.repair import backfill

    empty = datetime(2024, 8, 12, 20, tzinfo=UTC)  # before the night
    report = backfill.rebuild_hour(client, empty)
    assert (report.rows, report.views, report.impressions) == (0, 0, 0)
    staging = client.execute("SELECT name FROM system.tables WHERE database = currentDatabase() "
                             "AND name LIKE '%%_staging_%%'")
    assert staging == [], "staging tables are dropped"

