"""Duplicate flood: an hour of the night delivered ten more times (a client retry bug).

The first replay follows the night straight away (duplicates that may still find their window
open); the other nine come in a later run, after every window of that hour has fired and the
job has been stopped and restored (duplicates after their window closed). The counts do not
move, in the stream and after the hourly rebuild.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from harness import archive_counts, assert_stream_within_truth, compare_with_truth, rebuild_night, start_pipeline

from pipelines.reference.generator import NIGHT_END_MS, build_night, generate_night, produce

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
SCALE = 20_000
SEED = 4242
REPLAYED_HOUR = datetime(2024, 8, 13, 0, 0, tzinfo=UTC)
REPLAYS = 10

PER_EVENT = ("kind", "event_index", "event_time", "arrival", "post_id", "author_id", "viewer_id", "surface",
             "action", "late", "duplicate")


def replayed_hour(night, copies: int, first_arrival_ms: int):
    """Every delivery of the night whose event time lies in REPLAYED_HOUR, `copies` times over, in
    the original order, the first copy arriving at first_arrival_ms, each copy an hour after the
    previous (the records carry those arrival times as their Kafka timestamps)."""
    start_ms = int(REPLAYED_HOUR.timestamp() * 1000)
    picked = np.flatnonzero((night.event_time >= start_ms) & (night.event_time < start_ms + 3_600_000))
    shift = first_arrival_ms - int(night.arrival[picked].min())
    columns = {name: np.concatenate([getattr(night, name)[picked]] * copies) for name in PER_EVENT}
    columns["arrival"] = np.concatenate([night.arrival[picked] + shift + copy * 3_600_000 for copy in range(copies)])
    return replace(night, **columns), len(picked)


def test_an_hour_replayed_ten_times_changes_no_count(own_stack, tmp_path):
    from pipelines.store.clickhouse import connect

    settings, clickhouse = own_stack, connect(own_stack)
    truth = generate_night(settings, scale=SCALE, seed=SEED)
    night = build_night(SCALE, SEED)
    first, per_copy = replayed_hour(night, 1, NIGHT_END_MS)
    produce(settings, first)
    run = start_pipeline(settings, tmp_path, "night-and-first-replay")
    assert run.wait(timeout_s=900) == 0, run.tail()
    assert archive_counts(clickhouse) == {"view": truth.views, "impression": truth.impressions}
    assert_stream_within_truth(clickhouse, truth)

    rest, _ = replayed_hour(night, REPLAYS - 1, NIGHT_END_MS + 3_600_000)
    produce(settings, rest)
    run = start_pipeline(settings, tmp_path, "nine-more-replays")
    assert run.wait(timeout_s=900) == 0, run.tail()
    assert run.restarts() == []
    assert archive_counts(clickhouse) == {"view": truth.views, "impression": truth.impressions}
    assert_stream_within_truth(clickhouse, truth)

    rebuild_night(clickhouse)
    result = compare_with_truth(clickhouse, truth)
    print(f"duplicate flood: {per_copy:,} deliveries of {REPLAYED_HOUR:%H:00} replayed {REPLAYS}x "
          f"({per_copy * REPLAYS:,} extra); after the rebuild: {result}")
    assert result.exact, result
