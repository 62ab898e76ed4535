"""The generated night: the published counts exactly, its disorder, duplicates and late events."""

from __future__ import annotations

from collections import defaultdict

import jsonschema
import numpy as np
import pytest

from pipelines.ingest import schemas
from pipelines.reference import generator, testdata
from pipelines.reference.generator import (
    MAX_DISORDER_MS,
    NIGHT_END_MS,
    NIGHT_START_MS,
    SUBJECT_POST_ID,
    build_night,
    ground_truth,
    night_events,
)

SCALE = 50_000


@pytest.fixture(scope="module")
def night():
    return build_night(SCALE, seed=11)


@pytest.fixture(scope="module")
def events(night):
    return list(night_events(night))


def test_counts_are_the_published_figures_divided_by_the_scale(night):
    truth = ground_truth(night, SCALE)
    assert truth.subject_views == 73_000_000 // SCALE
    assert truth.related_posts == 4_000_000 // SCALE
    assert truth.related_views == 998_000_000 // SCALE
    assert truth.combined_views == truth.subject_views + truth.related_views
    assert truth.views == truth.combined_views + truth.other_views
    assert truth.other_posts == truth.related_posts // 10
    assert sum(row.views for row in truth.post_minutes) == truth.views
    assert sum(row.impressions for row in truth.post_minutes) == truth.impressions


def test_same_seed_same_stream_other_seed_other_stream(events):
    again = list(night_events(build_night(SCALE, seed=11)))
    assert again == events
    other = list(night_events(build_night(SCALE, seed=12)))
    assert other != events


def test_duplicate_deliveries_repeat_the_same_event(night, events):
    by_id = defaultdict(list)
    for _, event_type, payload in events:
        by_id[payload["event_id"]].append((event_type, payload))
    repeated = [copies for copies in by_id.values() if len(copies) > 1]
    assert len(repeated) == int(night.duplicate.sum()) > 0
    assert all(len(copies) == 2 and copies[0] == copies[1] for copies in repeated)


def test_arrival_is_out_of_order_within_the_bound_except_late_events(night):
    delay = night.arrival - night.event_time
    counted = night.kind != generator.POST
    assert (delay[~night.late & counted] <= MAX_DISORDER_MS).all()
    # Some posts' creation events come minutes after the post's first views.
    assert (delay[~counted] > 60_000).any()
    assert (delay[night.late] >= 180_000).all() and night.late.sum() >= 1
    assert (np.diff(night.arrival) >= 0).all()
    assert (np.diff(night.event_time) < 0).any(), "events should arrive out of event-time order"


def test_every_event_is_valid_against_its_schema_and_inside_the_window(events):
    validators = {t: jsonschema.Draft202012Validator(schemas.load_schema(t)) for t in generator.TYPE_NAMES}
    for _, event_type, payload in events:
        validators[event_type].validate(payload)
        assert NIGHT_START_MS <= payload["event_time"] < NIGHT_END_MS


def test_other_posts_are_not_tied_to_the_subject(night):
    related = set(night.related_post_ids.tolist())
    for post_id, (reply_to, quote_of, links, tags) in night.posts.items():
        if post_id not in related:
            assert generator.TRACKED_TAG not in tags
            assert all(p not in related and p != SUBJECT_POST_ID for p in [reply_to, quote_of, *links] if p)


def test_no_post_is_viewed_before_it_was_created(events):
    created = {p["post_id"]: p["event_time"] for _, t, p in events if t == "post"}
    for _, event_type, payload in events:
        if event_type == "view" and payload["post_id"] != SUBJECT_POST_ID:
            assert payload["event_time"] >= created[payload["post_id"]]


def test_ground_truth_distinct_viewers_match_a_recount(events, night):
    truth = ground_truth(night, SCALE)
    subject_viewers = {p["viewer_id"] for _, t, p in events if t == "view" and p["post_id"] == SUBJECT_POST_ID}
    assert truth.subject_unique_viewers == len(subject_viewers)


def test_malformed_records_fail_schema_validation():
    for event_type, raw, reason in testdata.malformed_records():
        try:
            import orjson

            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        validator = jsonschema.Draft202012Validator(schemas.load_schema(event_type))
        assert not validator.is_valid(payload), reason


def test_listeners_follow_the_night_and_sessions_rebuild_from_presence_events(night, events):
    from pipelines.rollups import listeners

    truth = ground_truth(night, SCALE)
    assert truth.peak_listeners > truth.listeners_per_minute[generator.FLOOD_DELAY_MINUTES + 5] > 0
    assert sum(truth.listeners_per_minute[: generator.FLOOD_DELAY_MINUTES]) == 0, "nobody listens before the start"
    presence = sorted((p["listener_id"], p["event_time"], p["action"]) for _, t, p in events if t == "presence")
    rebuilt = listeners.concurrent_per_minute(
        [(b, e) for _, b, e in listeners.sessions(presence)], NIGHT_START_MS, generator.NIGHT_MINUTES)
    assert rebuilt.tolist() == truth.listeners_per_minute


def test_ground_truth_round_trips_through_its_file_with_typed_post_minutes(night, tmp_path):
    truth = ground_truth(night, SCALE)
    path = tmp_path / "truth.json"
    truth.write(path)
    again = generator.GroundTruth.read(path)
    assert again == truth
    first = again.post_minutes[0]
    assert isinstance(first, generator.PostMinute)
    assert first.window_start.endswith(":00") and first.views + first.impressions > 0
    late = [row for row in again.post_minutes if row.has_late_events]
    assert sum(row.late_views + row.late_impressions for row in late) == truth.late_events > 0
