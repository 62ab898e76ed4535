"""End to end on the real services: generator -> Kafka -> Flink job -> Kafka -> loader -> ClickHouse.

The night at 1:20000 (3,650 views of the subject, 200 posts about it, 49,900 views of those),
with its duplicates, reordering and late events, plus malformed records injected into the
source topics. Counts are compared with the generator's ground truth exactly; unique viewers
against the sketch's bounds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka import Producer

from pipelines import query, sketches
from pipelines.cli import run_pipeline
from pipelines.generator import generate_night, malformed_records

pytestmark = pytest.mark.e2e
SCALE = 20_000
SEED = 1208


@pytest.fixture(scope="module")
def night(stack_settings, kafka_topics, clickhouse):
    truth = generate_night(stack_settings, scale=SCALE, seed=SEED)
    producer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap})
    for event_type, raw, _ in malformed_records():
        producer.produce(kafka_topics.source(event_type), raw, key=b"1")
    assert producer.flush(30) == 0
    stats = run_pipeline(stack_settings, bounded=True)
    return truth, stats


def test_views_and_impressions_in_the_archive_equal_ground_truth(night, clickhouse):
    truth, _ = night
    counts = dict(clickhouse.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
    assert counts == {"view": truth.views, "impression": truth.impressions}
    (distinct,), = clickhouse.execute("SELECT uniqExact(event_id) FROM events_raw")
    assert distinct == truth.views + truth.impressions


def test_every_post_minute_matches_ground_truth_despite_duplicates_and_reordering(night, clickhouse):
    truth, _ = night
    stream = {
        (post_id, str(window_start)): (views, impressions)
        for post_id, window_start, views, impressions in clickhouse.execute(
            "SELECT post_id, window_start, views, impressions FROM post_minute FINAL")
    }
    exact = 0
    for post_id, window_start, views, impressions, _, late_views, late_impressions in truth.post_minutes:
        got = stream.pop((post_id, window_start), (0, 0))
        if late_views == 0 and late_impressions == 0:
            assert got == (views, impressions), (post_id, window_start)
            exact += 1
        else:
            # A late event may or may not have beaten the watermark; it is never counted twice.
            assert views - late_views <= got[0] <= views, (post_id, window_start)
            assert impressions - late_impressions <= got[1] <= impressions, (post_id, window_start)
    assert stream == {}, "rows in ClickHouse that the night does not have"
    assert exact > 0.95 * len(truth.post_minutes)


def test_unique_viewers_lie_within_sketch_bounds(night, clickhouse):
    truth, _ = night
    subject = query.post_figures(clickhouse, truth.subject_post_id)
    assert subject.unique_viewers_lower <= truth.subject_unique_viewers <= subject.unique_viewers_upper
    rows = clickhouse.execute("SELECT post_id, toString(window_start), unique_viewers_sketch FROM post_minute FINAL",
                              settings={"strings_as_bytes": True})
    by_key = {(p, w.decode() if isinstance(w, bytes) else w): s for p, w, s in rows}
    checked = 0
    for post_id, window_start, views, _, unique, late_views, _ in truth.post_minutes:
        if late_views or not views:
            continue
        estimate, lower, upper = sketches.estimate_with_bounds(sketches.from_bytes(by_key[(post_id, window_start)]))
        assert lower <= unique <= upper, (post_id, window_start, unique, estimate)
        checked += 1
    assert checked > 0


def test_malformed_records_are_dead_lettered_with_reasons_and_change_no_count(night, clickhouse, kafka_topics):
    truth, stats = night
    expected = Counter((raw.decode(), reason) for _, raw, reason in malformed_records())
    rows = clickhouse.execute("SELECT payload, reason, source_topic FROM dead_letters FINAL")
    assert Counter((payload, reason) for payload, reason, _ in rows) == expected
    assert {topic for _, _, topic in rows} <= {kafka_topics.source(t) for t in ("view", "impression")}
    assert stats.dead_letters == len(expected)
    subject = query.post_figures(clickhouse, truth.subject_post_id)
    late_subject = sum(r[5] for r in truth.post_minutes if r[0] == truth.subject_post_id)
    assert truth.subject_views - late_subject <= subject.views <= truth.subject_views
