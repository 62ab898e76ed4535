"""Rebuild an hour of rollups from the archive (events_raw) and swap it in atomically.

The rebuild counts exactly what the archive holds, late events included, with the same sketch
module as the stream, writes the whole hour into a staging table and replaces the hour's
partition with it (`ALTER TABLE ... REPLACE PARTITION`): readers see the old hour or the new
one, never a mix, and running it twice gives the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipelines import sketches
from pipelines.clickhouse import POST_HOUR, POST_MINUTE, POST_SURFACE_MINUTE, sibling
from pipelines.config import REPO_ROOT
from pipelines.loader import POST_MINUTE_COLUMNS

SQL_DIR = REPO_ROOT / "sql" / "backfill"
# Every table an hourly rebuild replaces.
ROLLUP_TABLES = (POST_MINUTE, POST_HOUR, POST_SURFACE_MINUTE)
POST_HOUR_COLUMNS = ("post_id", "hour_start", "views", "impressions", "unique_viewers_sketch", "unique_viewers",
                     "version")
# Backfilled rows outrank every stream row (whose version is a Kafka offset).
BACKFILL_VERSION_BASE = 1 << 62


@dataclass(frozen=True)
class HourReport:
    hour_start: datetime
    rows: int
    views: int
    impressions: int
    seconds: float


def partition_id(hour_start: datetime) -> int:
    """The hour's partition value, as the tables' PARTITION BY computes it (2024081223)."""
    return int(hour_start.astimezone(UTC).strftime("%Y%m%d%H"))


STAGING_BATCH_ROWS = 50_000


def iter_rows_for_hour(client, hour_start: datetime, version: int) -> Iterator[tuple[str, tuple]]:
    """("minute", post_minute row) and ("hour", post_hour row) tuples of the hour, from
    events_raw, streamed in (post, minute) order: memory holds one post's viewers of the hour."""
    hour_start = hour_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    key, views, impressions, viewers = None, 0, 0, []
    post, hour_views, hour_impressions, hour_viewers = None, 0, 0, []
    for post_id, window_start, event_type, viewer_id in client.execute_iter(
        (SQL_DIR / "hour_events.sql").read_text(),
        {"from": hour_start, "to": hour_start + timedelta(hours=1)},
        settings={"max_block_size": 65_536},
    ):
        if (post_id, window_start) != key:
            if key is not None:
                yield "minute", _row(key, views, impressions, viewers, version)
            if post_id != post and post is not None:
                yield "hour", _row((post, hour_start), hour_views, hour_impressions, hour_viewers, version)
                hour_views, hour_impressions, hour_viewers = 0, 0, []
            key, views, impressions, viewers = (post_id, window_start), 0, 0, []
            post = post_id
        if event_type == "view":
            views += 1
            hour_views += 1
            viewers.append(viewer_id)
            hour_viewers.append(viewer_id)
        else:
            impressions += 1
            hour_impressions += 1
    if key is not None:
        yield "minute", _row(key, views, impressions, viewers, version)
        yield "hour", _row((post, hour_start), hour_views, hour_impressions, hour_viewers, version)


def _row(key: tuple, views: int, impressions: int, viewers: list[int], version: int) -> tuple:
    sketch = sketches.sketch_of(viewers)
    return (key[0], key[1], views, impressions, sketches.to_bytes(sketch), sketch.get_estimate(), version)


def rows_for_hour(client, hour_start: datetime, version: int) -> list[tuple]:
    """The hour's post_minute rows (the grain the stream writes)."""
    return [row for grain, row in iter_rows_for_hour(client, hour_start, version) if grain == "minute"]


def rebuild_hour(client, hour_start: datetime) -> HourReport:
    """Every rollup table's rows of the hour, rebuilt from the archive and swapped in.

    Each table gets a fresh staging copy filled with the whole hour, then REPLACE PARTITION:
    readers see a table's old hour or its new one, never a mix (an hour with no events becomes
    empty, as it should). Tables are swapped one after the other.
    """
    started = time.monotonic()
    hour_start = hour_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    version = BACKFILL_VERSION_BASE + int(time.time())
    partition = partition_id(hour_start)
    staging = {table: f"{table}_staging_{partition}" for table in ROLLUP_TABLES}  # allowlisted name + int
    try:
        for table, name in staging.items():
            client.execute(f"DROP TABLE IF EXISTS {name}")  # a crashed run's leftovers
            client.execute((SQL_DIR / "create_staging.sql").read_text().format(staging=name, table=table))
        totals = _fill_minutes_and_hour(client, staging, hour_start, version)
        _fill_surfaces(client, staging[POST_SURFACE_MINUTE], hour_start, version)
        for table, name in staging.items():
            client.execute(f"ALTER TABLE {table} REPLACE PARTITION {partition} FROM {name}")
    finally:
        for name in staging.values():
            client.execute(f"DROP TABLE IF EXISTS {name}")
    return HourReport(hour_start, *totals, time.monotonic() - started)


def _fill_minutes_and_hour(client, staging: dict[str, str], hour_start: datetime, version: int):
    inserts = {
        "minute": f"INSERT INTO {staging[POST_MINUTE]} ({', '.join(POST_MINUTE_COLUMNS)}) VALUES",
        "hour": f"INSERT INTO {staging[POST_HOUR]} ({', '.join(POST_HOUR_COLUMNS)}) VALUES",
    }
    batches: dict[str, list[tuple]] = {"minute": [], "hour": []}
    rows = views = impressions = 0
    writer = sibling(client)  # the hour streams in on `client` while batches go out on this one
    try:
        for grain, row in iter_rows_for_hour(client, hour_start, version):
            batches[grain].append(row)
            if grain == "minute":
                rows, views, impressions = rows + 1, views + row[2], impressions + row[3]
            if len(batches[grain]) >= STAGING_BATCH_ROWS:
                writer.execute(inserts[grain], batches[grain])
                batches[grain] = []
        for grain, batch in batches.items():
            if batch:
                writer.execute(inserts[grain], batch)
    finally:
        writer.disconnect()
    return rows, views, impressions


def _fill_surfaces(client, staging: str, hour_start: datetime, version: int) -> None:
    client.execute((SQL_DIR / "fill_surfaces.sql").read_text().format(staging=staging),
                   {"from": hour_start, "to": hour_start + timedelta(hours=1), "version": version})


def hours_with_events(client) -> list[datetime]:
    return [h.replace(tzinfo=UTC) for (h,) in client.execute(
        "SELECT DISTINCT toStartOfHour(event_time) AS h FROM events_raw ORDER BY h")]



@dataclass(frozen=True)
class Drift:
    """How the stream's rows of an hour differ from a rebuild from the archive."""

    hour_start: datetime
    stream_rows: int
    archive_rows: int
    missing: int            # windows the archive has and the stream lacks
    extra: int              # windows the stream has and the archive lacks
    count_differences: int  # windows whose views or impressions differ
    views_difference: int   # archive views - stream views
    estimates_outside: int  # windows whose unique estimate lies outside the other's bounds

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.count_differences or self.estimates_outside)


def stream_rows(client, hour_start: datetime) -> dict[tuple, tuple]:
    rows = client.execute(
        (SQL_DIR / "hour_rollups.sql").read_text(),
        {"from": hour_start, "to": hour_start + timedelta(hours=1)},
        settings={"strings_as_bytes": True},
    )
    # Window starts compare as UTC instants (the driver returns some DateTimes naive, some zoned).
    return {
        (post_id, _utc(window_start)): (views, impressions, sketch)
        for post_id, window_start, views, impressions, sketch in rows
    }


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def compare_hour(client, hour_start: datetime) -> Drift:
    """Compare the hour's rows in post_minute with a rebuild from events_raw (nothing written)."""
    hour_start = hour_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    stream = stream_rows(client, hour_start)
    archive = {(r[0], _utc(r[1])): (r[2], r[3], r[4]) for r in rows_for_hour(client, hour_start, 0)}
    count_differences = outside = 0
    for key in stream.keys() & archive.keys():
        (s_views, s_imps, s_sketch), (a_views, a_imps, a_sketch) = stream[key], archive[key]
        count_differences += (s_views, s_imps) != (a_views, a_imps)
        outside += _estimates_disagree(s_sketch, a_sketch)
    return Drift(
        hour_start=hour_start, stream_rows=len(stream), archive_rows=len(archive),
        missing=len(archive.keys() - stream.keys()), extra=len(stream.keys() - archive.keys()),
        count_differences=count_differences,
        views_difference=sum(v[0] for v in archive.values()) - sum(v[0] for v in stream.values()),
        estimates_outside=outside,
    )


def _estimates_disagree(a: bytes, b: bytes) -> bool:
    if not a or not b:
        return bool(a) != bool(b)
    first, second = sketches.from_bytes(a), sketches.from_bytes(b)
    a_est, a_low, a_high = sketches.estimate_with_bounds(first)
    b_est, b_low, b_high = sketches.estimate_with_bounds(second)
    return not (b_low <= a_est <= b_high and a_low <= b_est <= a_high)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hours whose start lies in [start, end)."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if hour < start:
        hour += timedelta(hours=1)
    hours = []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours
