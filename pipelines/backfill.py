"""Rebuild an hour of rollups from the archive (events_raw) and swap it in atomically.

The rebuild counts exactly what the archive holds, late events included, with the same sketch
module as the stream, writes the whole hour into a staging table and replaces the hour's
partition with it (`ALTER TABLE ... REPLACE PARTITION`): readers see the old hour or the new
one, never a mix, and running it twice gives the same rows (counts and sketch bytes; only the
version grows).

Each rollup table family is a `RollupBuilder` in `ROLLUP_BUILDERS`: a new rollup (per subject,
per surface, listeners, ...) is one more builder with the tables it owns and how it fills their
staging copies; `rebuild_hour` stages and swaps whatever the builders own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from pipelines import sketches
from pipelines.clickhouse import POST_HOUR, POST_MINUTE, POST_SURFACE_MINUTE, WRITABLE_TABLES, sibling
from pipelines.config import REPO_ROOT
from pipelines.loader import POST_MINUTE_COLUMNS

SQL_DIR = REPO_ROOT / "sql" / "backfill"
POST_HOUR_COLUMNS = ("post_id", "hour_start", "views", "impressions", "unique_viewers_sketch", "unique_viewers",
                     "version")
# A rebuilt row's version: BACKFILL_VERSION_BASE + the run's epoch seconds. Stream rows carry
# their Kafka offset (far below 2**62), so a rebuild outranks the stream in ReplacingMergeTree,
# and a later rebuild outranks an earlier one. (Within one hour's partition REPLACE PARTITION
# swaps whole parts anyway; the version matters when a late stream row lands after a rebuild.)
BACKFILL_VERSION_BASE = 1 << 62
STAGING_BATCH_ROWS = 50_000
READ_BLOCK_ROWS = 16_384
# An hour is read in chunks of posts of about this many archived events: ClickHouse 18.16 sends
# a GROUP BY result as one block whatever max_block_size says, so a chunk is what the client
# holds at once (about 60 MiB of grouped minutes at 750,000 events).
CHUNK_EVENTS = 750_000


def backfill_version(now: float | None = None) -> int:
    return BACKFILL_VERSION_BASE + int(time.time() if now is None else now)


def partition_id(hour_start: datetime) -> int:
    """The hour's partition value, as the tables' PARTITION BY computes it (2024081223)."""
    return int(hour_start.astimezone(UTC).strftime("%Y%m%d%H"))


def _hour(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (UTC hours are partitions)")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _utc(moment: datetime) -> datetime:
    # The driver returns some DateTimes naive (server zone UTC), some zoned.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _window(hour_start: datetime) -> dict:
    return {"from": hour_start, "to": hour_start + timedelta(hours=1)}


# --- builders ---------------------------------------------------------------------------------

class RollupBuilder(Protocol):
    """One family of rollup tables rebuilt from the archive, an hour at a time."""

    name: str
    tables: tuple[str, ...]

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int) -> dict[str, int]:
        """Write the hour's whole partition of each of `tables` into `staging[table]`; return
        figures for the report (e.g. rows, views)."""


def hour_chunks(client, hour_start: datetime) -> int:
    """How many post chunks the hour is read in: about CHUNK_EVENTS archived events each."""
    ((events,),) = client.execute((SQL_DIR / "hour_size.sql").read_text(), _window(hour_start))
    return max(1, -(-events // CHUNK_EVENTS))


def grouped_minutes(client, hour_start: datetime, chunks: int | None = None,
                    only_chunk: int | None = None) -> Iterator[tuple[int, datetime, int, int, list[int]]]:
    """(post_id, window_start, views, impressions, distinct viewer ids) per minute of the hour,
    from events_raw, chunk by chunk (post_id modulo chunks), each in (post_id, window_start)
    order. A post's minutes all lie in one chunk. Memory: one chunk of grouped minutes."""
    chunks = hour_chunks(client, hour_start) if chunks is None else chunks
    sql = (SQL_DIR / "hour_minutes.sql").read_text()
    for chunk in range(chunks) if only_chunk is None else (only_chunk,):
        for post_id, window_start, views, impressions, viewer_ids in client.execute_iter(
            sql, {**_window(hour_start), "chunks": chunks, "chunk": chunk},
            settings={"max_block_size": READ_BLOCK_ROWS},
        ):
            yield post_id, _utc(window_start), views, impressions, viewer_ids


def minute_rows(client, hour_start: datetime, version: int, chunks: int | None = None,
                only_chunk: int | None = None) -> Iterator[tuple]:
    """The hour's post_minute rows rebuilt from events_raw (chunked as `grouped_minutes`),
    exactly as the stream's loader builds them (`loader.rollup_row`: same counts, same sketch)."""
    for post_id, window_start, views, impressions, viewer_ids in grouped_minutes(client, hour_start, chunks,
                                                                                 only_chunk):
        yield _row(post_id, window_start, views, impressions, viewer_ids, version)


def _row(post_id: int, start: datetime, views: int, impressions: int, viewer_ids, version: int) -> tuple:
    sketch = sketches.sketch_of(viewer_ids)
    return (post_id, start, views, impressions, sketches.to_bytes(sketch), sketch.get_estimate(), version)


@dataclass(frozen=True)
class PostViewersBuilder:
    """post_minute (the stream's grain) and post_hour (the hour's sketch per post), in one pass.
    Memory: one block of minutes plus the current post's distinct viewers of the hour."""

    name: str = "post_viewers"
    tables: tuple[str, ...] = (POST_MINUTE, POST_HOUR)

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int) -> dict[str, int]:
        inserts = {
            POST_MINUTE: f"INSERT INTO {staging[POST_MINUTE]} ({', '.join(POST_MINUTE_COLUMNS)}) VALUES",
            POST_HOUR: f"INSERT INTO {staging[POST_HOUR]} ({', '.join(POST_HOUR_COLUMNS)}) VALUES",
        }
        batches: dict[str, list[tuple]] = {POST_MINUTE: [], POST_HOUR: []}
        totals = {"rows": 0, "views": 0, "impressions": 0, "post_hour_rows": 0}
        writer = sibling(client)  # the hour streams in on `client` while batches go out on this one

        def add(table: str, row: tuple) -> None:
            batches[table].append(row)
            if len(batches[table]) >= STAGING_BATCH_ROWS:
                writer.execute(inserts[table], batches[table])
                batches[table] = []

        post, hour_views, hour_impressions, hour_viewers = None, 0, 0, set()

        def close_post() -> None:
            add(POST_HOUR, _row(post, hour_start, hour_views, hour_impressions, hour_viewers, version))
            totals["post_hour_rows"] += 1

        try:
            for post_id, window_start, views, impressions, viewer_ids in grouped_minutes(client, hour_start):
                if post_id != post:
                    if post is not None:
                        close_post()
                    post, hour_views, hour_impressions, hour_viewers = post_id, 0, 0, set()
                add(POST_MINUTE, _row(post_id, window_start, views, impressions, viewer_ids, version))
                totals["rows"] += 1
                totals["views"] += views
                totals["impressions"] += impressions
                hour_views += views
                hour_impressions += impressions
                hour_viewers.update(viewer_ids)
            if post is not None:
                close_post()
            for table, batch in batches.items():
                if batch:
                    writer.execute(inserts[table], batch)
        finally:
            writer.disconnect()
        return totals


@dataclass(frozen=True)
class PostSurfacesBuilder:
    """post_surface_minute: exact counts only, so the server counts them (no rows through Python)."""

    name: str = "post_surfaces"
    tables: tuple[str, ...] = (POST_SURFACE_MINUTE,)

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int) -> dict[str, int]:
        target = staging[POST_SURFACE_MINUTE]
        client.execute((SQL_DIR / "fill_surfaces.sql").read_text().format(staging=target),
                       {**_window(hour_start), "version": version})
        ((rows,),) = client.execute(f"SELECT count() FROM {target}")
        return {"post_surface_minute_rows": rows}


# Every rollup an hourly rebuild replaces. Add a builder here for a new rollup table family.
ROLLUP_BUILDERS: tuple[RollupBuilder, ...] = (PostViewersBuilder(), PostSurfacesBuilder())
ROLLUP_TABLES = tuple(table for builder in ROLLUP_BUILDERS for table in builder.tables)


# --- rebuild ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HourReport:
    hour_start: datetime
    rows: int           # post_minute rows of the hour
    views: int
    impressions: int
    seconds: float
    figures: dict[str, int] = field(default_factory=dict)  # every builder's figures, by name


def staging_name(table: str, hour_start: datetime) -> str:
    """<table>_staging_<hour>: one per table and hour, so backfills of different hours can run
    at once. Only allowlisted tables: the name goes into SQL text."""
    if table not in WRITABLE_TABLES:
        raise ValueError(f"{table!r} is not a rollup table the pipeline writes: {sorted(WRITABLE_TABLES)}")
    return f"{table}_staging_{partition_id(hour_start)}"


def rebuild_hour(client, hour_start: datetime, builders: tuple[RollupBuilder, ...] = ROLLUP_BUILDERS,
                 version: int | None = None) -> HourReport:
    """Every rollup table's rows of the hour, rebuilt from the archive and swapped in.

    Each table gets a fresh staging copy filled with the whole hour, then REPLACE PARTITION:
    readers see a table's old hour or its new one, never a mix (an hour with no events becomes
    empty, as it should). Tables are swapped one after the other, after all are filled.
    """
    started = time.monotonic()
    hour_start = _hour(hour_start)
    version = backfill_version() if version is None else version
    partition = partition_id(hour_start)
    staging = {table: staging_name(table, hour_start) for builder in builders for table in builder.tables}
    create = (SQL_DIR / "create_staging.sql").read_text()
    figures: dict[str, int] = {}
    try:
        for table, name in staging.items():
            client.execute(f"DROP TABLE IF EXISTS {name}")  # a crashed run's leftovers
            client.execute(create.format(staging=name, table=table))
        for builder in builders:
            figures.update(builder.fill(client, staging, hour_start, version))
        for table, name in staging.items():
            client.execute(f"ALTER TABLE {table} REPLACE PARTITION {partition} FROM {name}")
    finally:
        for name in staging.values():
            client.execute(f"DROP TABLE IF EXISTS {name}")
    return HourReport(hour_start, figures.get("rows", 0), figures.get("views", 0), figures.get("impressions", 0),
                      time.monotonic() - started, figures)


def hours_with_events(client) -> list[datetime]:
    return [h.replace(tzinfo=UTC) for (h,) in client.execute(
        "SELECT DISTINCT toStartOfHour(event_time) AS h FROM events_raw ORDER BY h")]


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


# --- reconciliation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Drift:
    """How the stream's post_minute rows of an hour differ from a rebuild from the archive."""

    hour_start: datetime
    stream_rows: int
    archive_rows: int
    missing: int            # windows the archive has and the stream lacks
    extra: int              # windows the stream has and the archive lacks
    count_differences: int  # windows in both whose views or impressions differ
    views_difference: int   # archive views - stream views, over the hour
    impressions_difference: int
    estimates_outside: int  # windows whose unique estimate lies outside the other's bounds
    sketches_differ: int    # windows whose sketch bytes differ (informational: bounds decide)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.count_differences or self.estimates_outside)


def stream_rows(client, hour_start: datetime, chunks: int, chunk: int) -> Iterator[tuple]:
    """(post_id, window_start, views, impressions, sketch) of post_minute FINAL, one chunk of
    posts (as `grouped_minutes`), in key order."""
    for post_id, window_start, views, impressions, sketch in client.execute_iter(
        (SQL_DIR / "hour_rollups.sql").read_text(), {**_window(hour_start), "chunks": chunks, "chunk": chunk},
        settings={"strings_as_bytes": True, "max_block_size": READ_BLOCK_ROWS},
    ):
        yield post_id, _utc(window_start), views, impressions, sketch


def compare_hour(client, hour_start: datetime) -> Drift:
    """Compare the hour's rows in post_minute with a rebuild from events_raw, computed in memory
    and not written. Both sides come chunk by chunk in (post_id, window_start) order and are
    walked side by side, so memory stays one chunk of each."""
    hour_start = _hour(hour_start)
    chunks = hour_chunks(client, hour_start)
    tally = dict.fromkeys(("stream", "archive", "missing", "extra", "counts", "outside", "bytes",
                           "stream_views", "archive_views", "stream_impressions", "archive_impressions"), 0)
    second = sibling(client)
    try:
        for chunk in range(chunks):
            _walk(stream_rows(second, hour_start, chunks, chunk),
                  minute_rows(client, hour_start, 0, chunks, chunk), tally)
    finally:
        second.disconnect()
    return Drift(
        hour_start=hour_start, stream_rows=tally["stream"], archive_rows=tally["archive"],
        missing=tally["missing"], extra=tally["extra"], count_differences=tally["counts"],
        views_difference=tally["archive_views"] - tally["stream_views"],
        impressions_difference=tally["archive_impressions"] - tally["stream_impressions"],
        estimates_outside=tally["outside"], sketches_differ=tally["bytes"],
    )


def _walk(stream: Iterator[tuple], archive: Iterator[tuple], tally: dict[str, int]) -> None:
    """Merge two row streams sorted by (post_id, window_start) and tally how they differ."""
    s, a = next(stream, None), next(archive, None)
    while s is not None or a is not None:
        take_stream = a is None or (s is not None and s[:2] <= a[:2])
        take_archive = s is None or (a is not None and a[:2] <= s[:2])
        if take_stream and take_archive:
            tally["counts"] += (s[2], s[3]) != (a[2], a[3])
            tally["bytes"] += s[4] != a[4]
            tally["outside"] += estimates_disagree(s[4], a[4])
        elif take_stream:
            tally["extra"] += 1
        else:
            tally["missing"] += 1
        if take_stream:
            tally["stream"] += 1
            tally["stream_views"] += s[2]
            tally["stream_impressions"] += s[3]
            s = next(stream, None)
        if take_archive:
            tally["archive"] += 1
            tally["archive_views"] += a[2]
            tally["archive_impressions"] += a[3]
            a = next(archive, None)


def estimates_disagree(a: bytes, b: bytes) -> bool:
    """True when either sketch's estimate lies outside the other's bounds (2 std devs)."""
    if not a or not b:
        return bool(a) != bool(b)
    a_est, a_low, a_high = sketches.estimate_with_bounds(sketches.from_bytes(a))
    b_est, b_low, b_high = sketches.estimate_with_bounds(sketches.from_bytes(b))
    return not (b_low <= a_est <= b_high and a_low <= b_est <= a_high)
