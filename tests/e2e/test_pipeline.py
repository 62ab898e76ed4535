"""End to end on the real services: generator -> Kafka -> Flink job -> Kafka -> loader -> ClickHouse.

The night at 1:1000 (73,000 views of the subject, 4,000 posts about it, 998,000 views of those),
with its duplicates, reordering and late events, plus malformed records injected into the
source topics. Counts are compared with the generator's ground truth exactly; unique viewers
against the sketch's bounds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka import Producer

from pipelines.reference.generator import generate_night
from pipelines.reference.testdata import malformed_records
from pipelines.rollups import sketches
from pipelines.serve import figures_from_posts, figures_from_rollups, query
from pipelines.stream.runner import run_pipeline
from tests.expectations import (
    assert_figures_agree,
    assert_headline_matches_truth,
    assert_post_minutes_match_truth,
    assert_same_figures,
)
from tests.support import connected, module_namespace, poll

pytestmark = pytest.mark.e2e
SCALE = 1_000
SEED = 1208


# The night has a namespace of its own: no other test's rows in its database, whatever the order.
stack_settings = module_namespace("night")


@pytest.fixture(scope="module")
def kafka_topics(stack_settings):
    return stack_settings.topics


@pytest.fixture(scope="module")
def clickhouse(stack_settings):
    with connected(stack_settings) as client:
        yield client


@pytest.fixture(scope="module")
def night(stack_settings, kafka_topics, clickhouse):
    from pipelines.rollups.subjects import get_subject

    truth = generate_night(stack_settings, scale=SCALE, seed=SEED)
    producer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap})
    for event_type, raw, _ in malformed_records():
        producer.produce(kafka_topics.source(event_type), raw, key=b"1")
    assert producer.flush(30) == 0
    stats = run_pipeline(stack_settings, bounded=True)
    # What dashboards read as the stream left it, taken now: the tests that rebuild may run first.
    subject = get_subject("space-2024-08-12")
    live_figures.update(reference=figures_from_posts.subject_figures(clickhouse, subject, *query.ALL_TIME),
                        rolled=figures_from_rollups.subject_rollup_figures(clickhouse, subject, *query.ALL_TIME))
    return truth, stats


live_figures: dict = {}


def test_views_and_impressions_in_the_archive_equal_ground_truth(night, clickhouse):
    truth, _ = night
    counts = dict(clickhouse.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
    assert counts == {"view": truth.views, "impression": truth.impressions}
    (distinct,), = clickhouse.execute("SELECT uniqExact(event_id) FROM events_raw")
    assert distinct == truth.views + truth.impressions


def test_every_post_minute_matches_ground_truth_despite_duplicates_and_reordering(night, clickhouse):
    truth, _ = night
    assert_post_minutes_match_truth(clickhouse, truth)


def test_the_live_subject_rollups_equal_the_query_time_figures_before_any_rebuild(night, clickhouse):
    """What dashboards read while the night runs: the runner's refresh, told by the change feed
    what ClickHouse's consumers loaded, with no hourly rebuild yet."""
    rolled = assert_figures_agree(live_figures["reference"], live_figures["rolled"])
    assert rolled.subject_views > 0 and rolled.views_of_posts_about > 0 and rolled.listeners.peak_listeners > 0


def test_unique_viewers_lie_within_sketch_bounds(night, clickhouse):
    truth, _ = night
    subject = query.post_figures(clickhouse, truth.subject_post_id)
    assert subject.unique_viewers_lower <= truth.subject_unique_viewers <= subject.unique_viewers_upper
    rows = clickhouse.execute("SELECT post_id, toString(window_start), unique_viewers_sketch FROM post_minute FINAL",
                              settings={"strings_as_bytes": True})
    by_key = {(p, w.decode() if isinstance(w, bytes) else w): s for p, w, s in rows}
    checked, outside_95 = 0, 0
    for post_id, window_start, views, _, unique, late_views, _ in truth.post_minutes:
        if late_views or not views:
            continue
        sketch = sketches.from_bytes(by_key[(post_id, window_start)])
        _, lower, upper = sketches.estimate_with_bounds(sketch, num_std=3)
        assert lower <= unique <= upper, (post_id, window_start, unique, sketch.get_estimate())
        _, lower, upper = sketches.estimate_with_bounds(sketch, num_std=2)
        outside_95 += not lower <= unique <= upper
        checked += 1
    # Bounds at 2 standard deviations are 95 % bounds: over thousands of windows a few miss.
    assert checked > 1000 and outside_95 <= 0.05 * checked


def test_malformed_records_are_dead_lettered_with_reasons_and_change_no_count(night, clickhouse, kafka_topics):
    truth, stats = night
    expected = Counter((raw.decode(), reason) for _, raw, reason in malformed_records())
    rows = clickhouse.execute("SELECT payload, reason, source_topic FROM dead_letters FINAL")
    assert Counter((payload, reason) for payload, reason, _ in rows) == expected
    assert {topic for _, _, topic in rows} <= {kafka_topics.source(t) for t in ("view", "impression")}
    assert stats.dead_letters == len(expected)
    subject = query.post_figures(clickhouse, truth.subject_post_id)
    late_subject = sum(r.late_views for r in truth.post_minutes if r.post_id == truth.subject_post_id)
    assert truth.subject_views - late_subject <= subject.counts["views"] <= truth.subject_views


NIGHT = ("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")


@pytest.fixture(scope="module")
def dagster_resources(stack_settings):
    from dagster_project.resources import ClickHouseResource

    return {"clickhouse": ClickHouseResource(url=stack_settings.clickhouse_url)}


def _materialize(asset, hour, dagster_resources):
    import dagster as dg

    result = dg.materialize([asset], partition_key=f"{hour:%Y-%m-%d-%H:00}", resources=dagster_resources)
    assert result.success
    return result


@pytest.fixture(scope="module")
def drift_before_backfill(night, clickhouse, dagster_resources):
    """The reconciliation of every hour as the stream left it (late events make some drift)."""
    from dagster_project.assets import post_minute_reconciliation
    from pipelines.repair.backfill import hours_with_events

    return {hour: _materialize(post_minute_reconciliation, hour, dagster_resources)
            for hour in hours_with_events(clickhouse)}


@pytest.fixture(scope="module")
def stream_sums(night, clickhouse):
    """The stream's own rows, read before any rebuild (backfilled depends on it): per post and
    minute, (views, impressions) from post_minute and summed over post_surface_minute."""
    posts = {(p, w): (v, i) for p, w, v, i in clickhouse.execute(
        "SELECT post_id, window_start, views, impressions FROM post_minute FINAL")}
    surfaces = {(p, w): (v, i) for p, w, v, i in clickhouse.execute(
        "SELECT post_id, window_start, sum(views), sum(impressions) FROM post_surface_minute FINAL "
        "GROUP BY post_id, window_start")}
    return posts, surfaces


def test_the_streams_surface_rows_add_up_to_its_post_rows(stream_sums):
    """One aggregation gives both rollups (post_window): every post-minute row the stream wrote has
    surface rows that sum to its views and impressions, and no surface row is without its post row."""
    posts, surfaces = stream_sums
    assert len(posts) > 1000
    assert surfaces == posts


@pytest.fixture(scope="module")
def backfilled(night, clickhouse, dagster_resources, drift_before_backfill, stream_sums):
    """The stream's rows, then every hour of the night rebuilt from the archive (Dagster)."""
    from dagster_project.assets import post_minute_rollups

    before = _post_minute_rows(clickhouse)
    hours = sorted(drift_before_backfill)
    for hour in hours:
        _materialize(post_minute_rollups, hour, dagster_resources)
    return before, hours


def test_backfill_rebuilds_stream_rows_identically_and_counts_late_events(night, backfilled, clickhouse):
    from pipelines.repair.backfill import rebuild_hour

    truth, _ = night
    before, hours = backfilled
    after = _post_minute_rows(clickhouse)
    late = {(r.post_id, r.window_start) for r in truth.post_minutes if r.has_late_events}
    same = [key for key in before if key not in late]
    assert same and all(after[key] == before[key] for key in same), "a rebuild changed an on-time window"
    assert sum(v[0] for v in after.values()) == truth.views
    assert sum(v[1] for v in after.values()) == truth.impressions
    for hour in hours:
        rebuild_hour(clickhouse, hour)
    assert _post_minute_rows(clickhouse) == after, "a second rebuild changed something"


def test_the_hourly_job_repairs_the_dashboards_rollups_to_ground_truth(night, backfilled, clickhouse,
                                                                       dagster_resources):
    """The hourly schedule's job, all four assets of it, over every hour of the night: the subject
    rollups the dashboards read then hold the late events too, exactly the night's figures."""
    from dagster_project.definitions import defs
    from pipelines.rollups.subjects import get_subject

    truth, _ = night
    _, hours = backfilled
    job = defs.resolve_job_def("reconcile_closed_hour")
    assert len(job.asset_layer.executable_asset_keys) == 4
    for hour in hours:
        result = job.execute_in_process(partition_key=f"{hour:%Y-%m-%d-%H:00}", resources=dagster_resources,
                                        raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
    subject = get_subject("space-2024-08-12")
    start, end = query.parse_range(*NIGHT)
    rolled = assert_same_figures(clickhouse, subject, start, end)
    assert (rolled.subject_views, rolled.posts_about, rolled.views_of_posts_about, rolled.combined_views) == (
        truth.subject_views, truth.related_posts, truth.related_views, truth.combined_views)


def _post_minute_rows(client):
    rows = client.execute("SELECT post_id, toString(window_start), views, impressions, unique_viewers_sketch "
                          "FROM post_minute FINAL", settings={"strings_as_bytes": True})
    return {(p, w.decode()): (v, i, s) for p, w, v, i, s in rows}


def test_the_nights_headline_figures_through_the_query_api(night, backfilled, clickhouse):
    from pipelines.rollups.subjects import get_subject

    truth, _ = night
    subject = get_subject("space-2024-08-12")
    start, end = query.parse_range(*NIGHT)
    assert len(figures_from_posts._whole_hours(clickhouse, start, end)) == 2, "00:00 and 01:00 UTC come from post_hour"
    figures = figures_from_posts.subject_figures(clickhouse, subject, start, end, with_minutes=True)
    assert figures.minutes.combined_views.sum() == figures.combined_views, "hour rows and minute rows disagree"
    assert_headline_matches_truth(figures, truth)


def test_viewcount_query_prints_the_headline_and_explains_bad_questions(night, backfilled, stack_settings, capsys,
                                                                       monkeypatch):
    from pipelines import cli

    monkeypatch.setenv("VIEWCOUNT_CLICKHOUSE_URL", stack_settings.clickhouse_url)
    start, end, zone = NIGHT
    assert cli.main(["query", "subject", "space-2024-08-12", "--from", start, "--to", end, "--tz", zone]) == 0
    out = capsys.readouterr().out
    assert "73.0K views · 4.00K posts · 998K views of them · 1.07M combined" in out
    assert cli.main(["query", "subject", "no-such-subject"]) == 2
    assert "known subjects: space-2024-08-12" in capsys.readouterr().err
    assert cli.main(["query", "subject", "space-2024-08-12", "--from", end, "--to", start]) == 2
    assert "swap --from and --to" in capsys.readouterr().err
    assert cli.main(["query", "subject", "space-2024-08-12", "--from", start, "--to", end, "--tz", "Mars/Olympus"]) == 2
    assert "unknown time zone" in capsys.readouterr().err
    assert cli.main(["query", "subject", "space-2024-08-12",
                     "--from", "2030-01-01 00:00", "--to", "2030-01-02 00:00"]) == 2
    assert "no rows for subject" in capsys.readouterr().err


def _check_passed(result) -> bool:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation.passed


def test_reconciliation_flags_the_hours_with_late_events_and_passes_after_the_backfill(
        night, drift_before_backfill, backfilled, dagster_resources):
    from dagster_project.assets import post_minute_reconciliation

    truth, _ = night
    late_hours = {r.window_start[:13] for r in truth.post_minutes if r.has_late_events}
    flagged = {f"{hour:%Y-%m-%d %H}" for hour, result in drift_before_backfill.items() if not _check_passed(result)}
    assert flagged and flagged <= late_hours
    for hour in drift_before_backfill:
        assert _check_passed(_materialize(post_minute_reconciliation, hour, dagster_resources)), hour


def test_reconciliation_fails_on_a_seeded_drift_and_a_backfill_mends_only_that_hour(
        night, backfilled, clickhouse, dagster_resources):
    from dagster_project.assets import post_minute_reconciliation, post_minute_rollups
    from pipelines.repair.backfill import BACKFILL_VERSION_BASE
    from pipelines.store.clickhouse import POST_MINUTE, insert_rows
    from pipelines.store.tables import POST_MINUTE_COLUMNS

    _, hours = backfilled
    target = hours[2]
    rows = clickhouse.execute(
        "SELECT post_id, window_start, views, impressions, unique_viewers_sketch, unique_viewers "
        "FROM post_minute FINAL WHERE window_start >= %(from)s ORDER BY post_id, window_start LIMIT 1",
        {"from": target}, settings={"strings_as_bytes": True})
    post_id, window_start, views, impressions, sketch, estimate = rows[0]
    insert_rows(clickhouse, POST_MINUTE, POST_MINUTE_COLUMNS,
                [(post_id, window_start, views + 1, impressions, sketch, estimate, BACKFILL_VERSION_BASE * 2)])
    assert not _check_passed(_materialize(post_minute_reconciliation, target, dagster_resources))
    others = {k: v for k, v in _post_minute_rows(clickhouse).items() if not k[1].startswith(f"{target:%Y-%m-%d %H}")}
    # The seeded row outranks backfill versions of this run, so mend it the way an operator
    # would after such a bug: rebuild the hour (its rows get the newest versions) and look again.
    clickhouse.execute("ALTER TABLE post_minute DELETE WHERE version = %(v)s", {"v": BACKFILL_VERSION_BASE * 2})
    poll(lambda: not clickhouse.execute(
        "SELECT count() FROM post_minute WHERE version = %(v)s", {"v": BACKFILL_VERSION_BASE * 2})[0][0],
         30, "the seeded row deleted")
    _materialize(post_minute_rollups, target, dagster_resources)
    assert _check_passed(_materialize(post_minute_reconciliation, target, dagster_resources))
    after = {k: v for k, v in _post_minute_rows(clickhouse).items() if not k[1].startswith(f"{target:%Y-%m-%d %H}")}
    assert after == others, "a backfill of one hour changed another"


def test_views_by_surface_and_impressions_by_action_add_up(night, backfilled, clickhouse):
    truth, _ = night
    by_surface = query.breakdown(clickhouse, truth.subject_post_id, "surface")
    assert dict(zip(by_surface.surface, by_surface.views, strict=True)) == truth.subject_views_by_surface
    (total,), = clickhouse.execute("SELECT sum(views) FROM post_surface_minute FINAL")
    (minutes,), = clickhouse.execute("SELECT sum(views) FROM post_minute FINAL")
    assert total == minutes
    by_action = query.breakdown(clickhouse, truth.subject_post_id, "action")
    assert by_action.impressions.sum() == query.post_figures(clickhouse, truth.subject_post_id).counts["impressions"]

