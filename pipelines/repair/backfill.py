"""Rebuild an hour of rollups from the archive (events_raw) and swap it in atomically.

The rebuild counts exactly what the archive holds, late events included, with the same sketch
module as the stream, writes the whole hour into a staging table and replaces the hour's
partition with it (`ALTER TABLE ... REPLACE PARTITION`): readers see the old hour or the new
one, never a mix, and running it twice gives the same rows (counts and sketch bytes; only the
version grows).

Each rollup table family is a `RollupBuilder` in `ROLLUP_BUILDERS`: a new rollup (per subject,
per surface, listeners, ...) is one more builder with the tables it owns and how it fills their
staging copies; `rebuild_hour` stages and swaps whatever the builders own. How the stream's
rows compare with a rebuild, without writing it, is `pipelines.repair.reconcile`.

On a ClickHouse cluster (a `shape`: pipelines/store/shapes.py) the same runs once per shard, on one
replica of it (pipelines/store/shards.py): the archive and the post rollups are all sharded by post,
so a shard's archive rows (`events_raw_local`) are exactly its posts' rows; its staging tables sit
beside its `_local` tables, unreplicated, and REPLACE PARTITION of a `_local` table reaches the
shard's other replica through ZooKeeper (docs/scale-out.md, "The repairs on a cluster").
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import NamedTuple, Protocol

from pipelines.config import REPO_ROOT
from pipelines.rollups import sketches
from pipelines.store import shapes, shards
from pipelines.store.clickhouse import POST_HOUR, POST_MINUTE, POST_SURFACE_MINUTE, WRITABLE_TABLES, sibling
from pipelines.store.tables import (
    BACKFILL_VERSION_BASE,
    ERASED_VIEWERS,
    EVENTS_RAW,
    POST_HOUR_COLUMNS,
    POST_MINUTE_COLUMNS,
    POST_MINUTE_COUNTS,
)

SQL_DIR = REPO_ROOT / "sql" / "backfill"
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


def backfill_sql(name: str, **tables: str) -> str:
    """sql/backfill/<name>.sql with its table placeholders filled in.

    One placeholder style, `%(name)s`, in every file: the names given here as `tables` are
    identifiers (a rollup table, its `_local` table on a cluster or its staging copy, checked against
    the allowlist) and go into the text; `archive` is events_raw unless given (a shard's rebuild
    reads events_raw_local); every other placeholder stays for the driver, which sends the value escaped."""
    text = _backfill_sql_text(name)
    for placeholder, table in {"archive": EVENTS_RAW, **tables}.items():
        text = text.replace(f"%({placeholder})s", _allowlisted(table))
    return text


@cache
def _backfill_sql_text(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


_STAGING_NAME = re.compile(r"^(?P<table>[a-z_]+)_staging_\d{10}$")


def _allowlisted(table: str) -> str:
    staging = _STAGING_NAME.match(table)
    if table.removesuffix(shapes.LOCAL_SUFFIX) in WRITABLE_TABLES or (staging and staging["table"] in WRITABLE_TABLES):
        return table
    raise ValueError(f"{table!r} is neither a table the pipeline writes nor its staging copy: "
                     f"{sorted(WRITABLE_TABLES)}")


def hour_of(moment: datetime) -> datetime:
    """The UTC hour (a partition) that an aware moment lies in."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone: pass an aware datetime (UTC hours are partitions)")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def as_utc(moment: datetime) -> datetime:
    # The driver returns some DateTimes naive (server zone UTC), some zoned.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def hour_window(hour_start: datetime) -> dict:
    """The driver parameters `from` and `to` of an hour's queries."""
    return {"from": hour_start, "to": hour_start + timedelta(hours=1)}


# --- builders ---------------------------------------------------------------------------------

class RollupBuilder(Protocol):
    """One family of rollup tables rebuilt from the archive, an hour at a time."""

    name: str
    tables: tuple[str, ...]

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int,
             archive: str = EVENTS_RAW) -> dict[str, int]:
        """Write the hour's whole partition of each of `tables` into `staging[table]`, from `archive`
        (a shard's own `events_raw_local` on a cluster); return figures for the report (e.g. rows,
        views). Every figure sums over shards."""


def hour_chunks(client, hour_start: datetime, archive: str = EVENTS_RAW) -> int:
    """How many post chunks the hour is read in: about CHUNK_EVENTS archived events each."""
    ((events,),) = client.execute(backfill_sql("hour_size", archive=archive), hour_window(hour_start))
    return max(1, -(-events // CHUNK_EVENTS))


class ArchivedMinute(NamedTuple):
    """One post and minute as the archive has it: deduplicated counts and the distinct viewers."""

    post_id: int
    window_start: datetime
    counts: dict[str, int]  # by name, in the order of POST_MINUTE_COUNTS
    viewer_ids: list[int]


def grouped_minutes(client, hour_start: datetime, chunks: int | None = None,
                    only_chunk: int | None = None, archive: str = EVENTS_RAW) -> Iterator[ArchivedMinute]:
    """Every post and minute of the hour, from events_raw (or `archive`), chunk by chunk (post_id
    modulo chunks), each in (post_id, window_start) order. A post's minutes all lie in one chunk.
    Memory: one chunk of grouped minutes."""
    chunks = hour_chunks(client, hour_start, archive) if chunks is None else chunks
    sql = backfill_sql("hour_minutes", archive=archive)
    for chunk in range(chunks) if only_chunk is None else (only_chunk,):
        for post_id, window_start, *counts, viewer_ids in client.execute_iter(
            sql, {**hour_window(hour_start), "chunks": chunks, "chunk": chunk},
            settings={"max_block_size": READ_BLOCK_ROWS},
        ):
            yield ArchivedMinute(post_id, as_utc(window_start), dict(zip(POST_MINUTE_COUNTS, counts, strict=True)),
                                 viewer_ids)


def minute_rows(client, hour_start: datetime, version: int, chunks: int | None = None,
                only_chunk: int | None = None) -> Iterator[tuple]:
    """The hour's post_minute rows rebuilt from events_raw (chunked as `grouped_minutes`),
    exactly as the stream's loader builds them (`loader.rollup_row`: same counts, same sketch)."""
    for minute in grouped_minutes(client, hour_start, chunks, only_chunk):
        yield _row(minute.post_id, minute.window_start, minute.counts, minute.viewer_ids, version)


def _row(post_id: int, start: datetime, counts: Mapping[str, int], viewer_ids, version: int) -> tuple:
    """A post_minute or post_hour row (post_rollup_columns)."""
    sketch = sketches.sketch_of(viewer_ids)
    return (post_id, start, *(counts[name] for name in POST_MINUTE_COUNTS), sketches.to_bytes(sketch),
            sketch.get_estimate(), version)


@dataclass(frozen=True)
class PostViewersBuilder:
    """post_minute (the stream's grain) and post_hour (the hour's sketch per post), in one pass.
    Memory: one block of minutes plus the current post's distinct viewers of the hour."""

    name: str = "post_viewers"
    tables: tuple[str, ...] = (POST_MINUTE, POST_HOUR)

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int,
             archive: str = EVENTS_RAW) -> dict[str, int]:
        inserts = {
            POST_MINUTE: f"INSERT INTO {staging[POST_MINUTE]} ({', '.join(POST_MINUTE_COLUMNS)}) VALUES",
            POST_HOUR: f"INSERT INTO {staging[POST_HOUR]} ({', '.join(POST_HOUR_COLUMNS)}) VALUES",
        }
        batches: dict[str, list[tuple]] = {POST_MINUTE: [], POST_HOUR: []}
        totals = {"rows": 0, **dict.fromkeys(POST_MINUTE_COUNTS, 0), "post_hour_rows": 0}
        writer = sibling(client)  # the hour streams in on `client` while batches go out on this one

        def add(table: str, row: tuple) -> None:
            batches[table].append(row)
            if len(batches[table]) >= STAGING_BATCH_ROWS:
                writer.execute(inserts[table], batches[table])
                batches[table] = []

        post, hour_counts, hour_viewers = None, dict.fromkeys(POST_MINUTE_COUNTS, 0), set()

        def close_post() -> None:
            add(POST_HOUR, _row(post, hour_start, hour_counts, hour_viewers, version))
            totals["post_hour_rows"] += 1

        try:
            for minute in grouped_minutes(client, hour_start, archive=archive):
                if minute.post_id != post:
                    if post is not None:
                        close_post()
                    post, hour_counts, hour_viewers = minute.post_id, dict.fromkeys(POST_MINUTE_COUNTS, 0), set()
                add(POST_MINUTE, _row(minute.post_id, minute.window_start, minute.counts, minute.viewer_ids, version))
                totals["rows"] += 1
                for name, count in minute.counts.items():  # an hour's counts are the sums of its minutes'
                    totals[name] += count
                    hour_counts[name] += count
                hour_viewers.update(minute.viewer_ids)
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

    def fill(self, client, staging: Mapping[str, str], hour_start: datetime, version: int,
             archive: str = EVENTS_RAW) -> dict[str, int]:
        target = staging[POST_SURFACE_MINUTE]
        client.execute(backfill_sql("fill_surfaces", staging=target, archive=archive),
                       {**hour_window(hour_start), "version": version})
        ((rows,),) = client.execute(backfill_sql("staging_rows", staging=target))
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


class ShardsNotAllSwapped(RuntimeError):
    """A cluster's rebuild swapped the hour in on some shards and failed on others: the hour is not
    whole (its ledger entry stays pending, so the next repair runs it again; a rebuild is idempotent)."""


@dataclass
class _HourOnServer:
    """One server's part of an hour's rebuild: staging copies filled from its archive, swapped in.
    One server: the tables by their names, staging `AS` them. A shard of a cluster: its `_local`
    tables and archive, staging unreplicated beside them (a replicated copy would need a ZooKeeper
    path of its own and copy every staged part to the other replica for nothing)."""

    client: object
    hour_start: datetime
    version: int
    builders: tuple[RollupBuilder, ...]
    shape: shapes.ClusterShape | None = None

    def __post_init__(self) -> None:
        self.staging = {table: staging_name(table, self.hour_start) for b in self.builders for table in b.tables}

    def stored(self, table: str) -> str:
        return shapes.stored_table(table, self.shape)

    def stage(self) -> dict[str, int]:
        for table, name in self.staging.items():
            self.client.execute(backfill_sql("drop_staging", staging=name))  # a crashed run's leftovers
            if self.shape is None:
                self.client.execute(backfill_sql("create_staging", staging=name, table=table))
            else:
                self.client.execute(self._create_beside(table, name))
        figures: dict[str, int] = {}
        for builder in self.builders:
            for name, value in builder.fill(self.client, self.staging, self.hour_start, self.version,
                                            archive=self.stored(EVENTS_RAW)).items():
                figures[name] = figures.get(name, 0) + value
        return figures

    def _create_beside(self, table: str, name: str) -> str:
        local = self.stored(table)
        ((engine_full,),) = self.client.execute(backfill_sql("engine_of"), {"table": local})
        # The engine clause is the server's own description of our table, reduced by a strict pattern.
        return backfill_sql("create_shard_staging", staging=name, table=local).replace(
            "%(engine)s", shapes.unreplicated_engine(engine_full))

    def swap(self) -> None:
        for table, name in self.staging.items():
            self.client.execute(backfill_sql("replace_partition", table=self.stored(table), staging=name),
                                {"partition": partition_id(self.hour_start)})

    def drop(self) -> None:
        for name in self.staging.values():
            self.client.execute(backfill_sql("drop_staging", staging=name))


def rebuild_hour(client, hour_start: datetime, builders: tuple[RollupBuilder, ...] = ROLLUP_BUILDERS,
                 version: int | None = None, shape: shapes.ClusterShape | None = None) -> HourReport:
    """Every rollup table's rows of the hour, rebuilt from the archive and swapped in.

    Each table gets a fresh staging copy filled with the whole hour, then REPLACE PARTITION:
    readers see a table's old hour or its new one, never a mix (an hour with no events becomes
    empty, as it should). Tables are swapped one after the other, after all are filled.

    On a cluster (`shape`), each shard rebuilds its own posts on one of its replicas (the first that
    can: shards.one_replica_per_shard; a shard with none stops it before anything changes), after
    that replica has fetched all its shard's archive and every erased viewer (shards.sync); every
    shard's staging is filled before any is swapped in. A shard failing its swap after another's
    raises ShardsNotAllSwapped: never a half-rebuilt hour reported as done.
    """
    started = time.monotonic()
    hour_start = hour_of(hour_start)
    version = backfill_version() if version is None else version
    if shape is None:
        figures = _rebuild_on([_HourOnServer(client, hour_start, version, builders)], hour_start)
    else:
        tables = [shapes.stored_table(t, shape) for t in (EVENTS_RAW, *(t for b in builders for t in b.tables))]
        with shards.one_replica_per_shard(client, shape, tables) as replicas:
            for replica in replicas:
                shards.sync(replica, (shapes.stored_table(EVENTS_RAW, shape), ERASED_VIEWERS))
            figures = _rebuild_on([_HourOnServer(r.client, hour_start, version, builders, shape) for r in replicas],
                                  hour_start, [r.server for r in replicas])
    return HourReport(hour_start, figures.get("rows", 0), figures.get("views", 0), figures.get("impressions", 0),
                      time.monotonic() - started, figures)


def _rebuild_on(parts: list[_HourOnServer], hour_start: datetime, servers: list | None = None) -> dict[str, int]:
    figures: dict[str, int] = {}
    swapped, failed = 0, True
    try:
        for part in parts:
            for name, value in part.stage().items():
                figures[name] = figures.get(name, 0) + value
        for part in parts:
            part.swap()
            swapped += 1
        failed = False
    except Exception as exc:  # noqa: BLE001 - re-raised; named when the hour is half swapped (a lost connection too)
        if 0 < swapped < len(parts):
            done = ", ".join(s.describe() for s in servers[:swapped])
            raise ShardsNotAllSwapped(
                f"the rebuild of {hour_start:%Y-%m-%d %H:00} UTC was swapped in on {done} but failed on "
                f"{servers[swapped].describe()} ({exc}): the hour is not whole; run it again (it is idempotent)"
            ) from exc
        raise
    finally:
        for part in parts:
            try:
                part.drop()
            except Exception:  # noqa: BLE001 - after a failure, that failure is the news: a server lost
                if not failed:  # mid-rebuild keeps its staging until its next rebuild drops the leftovers
                    raise
    return figures


def hours_with_events(client) -> list[datetime]:
    return [as_utc(h) for (h,) in client.execute(backfill_sql("hours_with_events"))]


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
