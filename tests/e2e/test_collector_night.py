"""End to end through the HTTP collector: the night at 1:5000 posted in client batches to
`viewcount collect`, then the job and loader (bounded), then the same exact figures as the direct
path (tests/e2e/test_pipeline.py): counts against the ground truth exactly, sketches within bounds.

The night is of 2024 and reaches the collector now, so both the collector and the job run with
VIEWCOUNT_EVENT_MAX_AGE_S widened to ten years (docs/collector.md).
"""

from __future__ import annotations

import pytest

from pipelines.ingest.collector_process import CollectorProcess
from pipelines.reference.generator import generate_night
from pipelines.serve import figures_from_posts, query
from pipelines.stream.runner import run_pipeline
from tests.expectations import assert_headline_matches_truth, assert_post_minutes_match_truth
from tests.support import namespace

pytestmark = pytest.mark.e2e
SCALE = 5_000
SEED = 1208
TEN_YEARS_S = 10 * 365 * 24 * 3600
KEY = "night-client-key-0123456789"
NIGHT = ("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")


@pytest.fixture(scope="module")
def via_http(stack_settings, session_tag):
    """Topics and a database of this module's own (tests.support.namespace); the night sent through a collector."""
    from pipelines.store.clickhouse import connect

    with namespace(stack_settings, f"collnight{session_tag}", event_max_age_s=TEN_YEARS_S) as settings:
        with CollectorProcess(settings, {"night": KEY}, workers=2) as collector:
            truth = generate_night(settings, scale=SCALE, seed=SEED, via=collector.url, via_key=KEY)
        stats = run_pipeline(settings, bounded=True)
        yield settings, truth, stats, connect(settings)


def test_every_event_sent_over_http_reaches_the_archive_once(via_http):
    _, truth, stats, clickhouse = via_http
    counts = dict(clickhouse.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
    assert counts == {"view": truth.views, "impression": truth.impressions}
    (distinct,), = clickhouse.execute("SELECT uniqExact(event_id) FROM events_raw")
    assert distinct == truth.views + truth.impressions
    assert stats.dead_letters == 0, "the collector forwarded only what the job accepts"


def test_every_post_minute_matches_ground_truth_as_on_the_direct_path(via_http):
    _, truth, _, clickhouse = via_http
    assert_post_minutes_match_truth(clickhouse, truth)


def test_the_nights_headline_figures_through_the_collector(via_http):
    from pipelines.repair.backfill import hours_with_events, rebuild_hour
    from pipelines.rollups.subjects import get_subject

    _, truth, _, clickhouse = via_http
    for hour in hours_with_events(clickhouse):  # late events, as the hourly rebuild counts them
        rebuild_hour(clickhouse, hour)
    start, end = query.parse_range(*NIGHT)
    figures = figures_from_posts.subject_figures(clickhouse, get_subject("space-2024-08-12"), start, end)
    assert_headline_matches_truth(figures, truth)
