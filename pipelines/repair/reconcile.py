"""How the stream's post_minute rows of an hour differ from a rebuild from the archive (written nowhere).

Both sides come chunk by chunk in (post_id, window_start) order, as `pipelines.repair.backfill` reads
the archive, and are walked side by side: memory stays one chunk of each, whatever the hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from pipelines.repair.backfill import (
    READ_BLOCK_ROWS,
    as_utc,
    backfill_sql,
    grouped_minutes,
    hour_chunks,
    hour_of,
    hour_window,
)
from pipelines.rollups import sketches
from pipelines.store.clickhouse import sibling
from pipelines.store.tables import POST_MINUTE_COLUMNS, POST_MINUTE_COUNTS


@dataclass
class Drift:
    """How the stream's post_minute rows of an hour differ from a rebuild from the archive
    (counted up by `count_differences`, chunk after chunk)."""

    hour_start: datetime
    stream_rows: int = 0
    archive_rows: int = 0
    missing: int = 0            # windows the archive has and the stream lacks
    extra: int = 0              # windows the stream has and the archive lacks
    count_differences: int = 0  # windows in both whose counts (POST_MINUTE_COUNTS) differ
    views_difference: int = 0   # archive views - stream views, over the hour
    impressions_difference: int = 0
    estimates_outside: int = 0  # windows whose unique estimate lies outside the other's bounds
    sketches_differ: int = 0    # windows whose sketch bytes differ (informational: bounds decide)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.count_differences or self.estimates_outside)


class MinuteRollup(NamedTuple):
    """One post-minute row to compare: the stream's as stored, or the archive's as a rebuild
    would write it (the same sketch module, so on-time windows have the same bytes)."""

    post_id: int
    window_start: datetime
    counts: dict[str, int]  # by name, in the order of POST_MINUTE_COUNTS
    sketch: bytes  # compact HLL of the distinct viewers

    @property
    def key(self) -> tuple[int, datetime]:
        return self.post_id, self.window_start


def stream_rollups(client, hour_start: datetime, chunks: int, chunk: int) -> Iterator[MinuteRollup]:
    """post_minute FINAL rows of one chunk of posts (as `backfill.grouped_minutes`), in key order."""
    for values in client.execute_iter(
        backfill_sql("hour_rollups"), {**hour_window(hour_start), "chunks": chunks, "chunk": chunk},
        settings={"strings_as_bytes": True, "max_block_size": READ_BLOCK_ROWS},
    ):
        row = dict(zip(POST_MINUTE_COLUMNS, values, strict=True))
        yield MinuteRollup(row["post_id"], as_utc(row["window_start"]),
                           {name: row[name] for name in POST_MINUTE_COUNTS}, row["unique_viewers_sketch"])


def archive_rollups(client, hour_start: datetime, chunks: int, chunk: int) -> Iterator[MinuteRollup]:
    """The same chunk rebuilt from events_raw, as `backfill.minute_rows` would write it."""
    for minute in grouped_minutes(client, hour_start, chunks, chunk):
        yield MinuteRollup(minute.post_id, minute.window_start, minute.counts,
                           sketches.to_bytes(sketches.sketch_of(minute.viewer_ids)))


def compare_hour(client, hour_start: datetime) -> Drift:
    """Compare the hour's rows in post_minute with a rebuild from events_raw, computed in memory
    and not written."""
    hour_start = hour_of(hour_start)
    chunks = hour_chunks(client, hour_start)
    drift = Drift(hour_start)
    rollup_reader = sibling(client)  # both sides stream at once: one connection each
    try:
        for chunk in range(chunks):
            count_differences(stream_rollups(rollup_reader, hour_start, chunks, chunk),
                              archive_rollups(client, hour_start, chunks, chunk), drift)
    finally:
        rollup_reader.disconnect()
    return drift


def count_differences(stream: Iterator[MinuteRollup], archive: Iterator[MinuteRollup], drift: Drift) -> None:
    """Merge two row streams sorted by (post_id, window_start) and add how they differ to `drift`."""
    stream_row, archive_row = next(stream, None), next(archive, None)
    while stream_row is not None or archive_row is not None:
        take_stream = archive_row is None or (stream_row is not None and stream_row.key <= archive_row.key)
        take_archive = stream_row is None or (archive_row is not None and archive_row.key <= stream_row.key)
        if take_stream and take_archive:
            drift.count_differences += stream_row.counts != archive_row.counts
            drift.sketches_differ += stream_row.sketch != archive_row.sketch
            drift.estimates_outside += estimates_disagree(stream_row.sketch, archive_row.sketch)
        elif take_stream:
            drift.extra += 1
        else:
            drift.missing += 1
        if take_stream:
            drift.stream_rows += 1
            drift.views_difference -= stream_row.counts["views"]
            drift.impressions_difference -= stream_row.counts["impressions"]
            stream_row = next(stream, None)
        if take_archive:
            drift.archive_rows += 1
            drift.views_difference += archive_row.counts["views"]
            drift.impressions_difference += archive_row.counts["impressions"]
            archive_row = next(archive, None)


def estimates_disagree(a: bytes, b: bytes) -> bool:
    """True when either sketch's estimate lies outside the other's bounds (2 std devs)."""
    if not a or not b:
        return bool(a) != bool(b)
    a_est, a_low, a_high = sketches.estimate_with_bounds(sketches.from_bytes(a))
    b_est, b_low, b_high = sketches.estimate_with_bounds(sketches.from_bytes(b))
    return not (b_low <= a_est <= b_high and a_low <= b_est <= a_high)
