"""The column registry: every ClickHouse table's columns and every job output's fields, in one place.

Readers and writers (the job's sinks, ClickHouse's Kafka consumers, the loader, the backfill, the
tests) take their column lists from here; the tables themselves are created by sql/migrations/.
An event field is defined in schemas/ and carried through the job under the names below.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS_RAW = "events_raw"
POST_MINUTE = "post_minute"
POSTS = "posts"
DEAD_LETTERS = "dead_letters"
SPACE_PRESENCE = "space_presence"
POST_SURFACE_MINUTE = "post_surface_minute"
POST_HOUR = "post_hour"
# A rebuilt row's version (pipelines.repair.backfill): BACKFILL_VERSION_BASE + the run's epoch
# seconds. Stream rows carry the wall-clock milliseconds they were emitted at (far below 2**62),
# so a rebuild outranks the stream in ReplacingMergeTree, and a later rebuild outranks an earlier
# one. (Within one hour's partition REPLACE PARTITION swaps whole parts anyway; the version
# matters when a late stream row lands after a rebuild.)
BACKFILL_VERSION_BASE = 1 << 62
# Subject rollups (pipelines/rollups/subject_rollups.py, migration 0010).
SUBJECT_POSTS = "subject_posts"
SUBJECT_ROLLUP = "subject_rollup"
SUBJECT_REFRESH_STATE = "subject_refresh_state"
# What changed, for the subject refresh: (source table, post or Space id, minute, server time).
ROLLUP_CHANGES = "rollup_changes"
# The ledger of changed hours and their repairs (pipelines/repair/ledger.py, migration 0011).
CHANGED_HOURS = "changed_hours"
HOUR_REPAIRS = "hour_repairs"
LEDGER_SCANS = "ledger_scans"
# Erasure (pipelines/repair/erasure.py, migration 0012): the pseudonym key (kept in the writer's
# private database and read through a Merge table, migration 0014), the erased viewers (by
# pseudonym), the requests, the sweeps.
PSEUDONYM_KEY = "pseudonym_key"
ERASED_VIEWERS = "erased_viewers"
ERASURE_REQUESTS = "erasure_requests"
ERASURE_SWEEPS = "erasure_sweeps"

# The counts of a post and minute, exact and deduplicated on event_id, in their order in post_minute
# and post_hour. Rows of them combine by summing: an hour's row, or a range's figures, are the sums
# of its minutes' (the unique viewers are no count: a sketch, unioned). The job counts them
# (PostWindow.java) and so does the archive (sql/backfill/hour_minutes.sql); the tables, the job's
# records, the rebuild, the reconciliation and a post's figures take them from here.
POST_MINUTE_COUNTS = ("views", "impressions")


def post_rollup_columns(window: str) -> tuple[str, ...]:
    """post_minute's and post_hour's columns, the same but for the window's: the rebuild writes
    both from one tuple (pipelines.repair.backfill)."""
    return ("post_id", window, *POST_MINUTE_COUNTS, "unique_viewers_sketch", "unique_viewers", "version")


TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    EVENTS_RAW: ("event_type", "event_id", "event_time", "event_time_ms", "post_id", "author_id",
                 "viewer_id", "surface", "client", "action"),
    POST_MINUTE: post_rollup_columns("window_start"),
    POST_HOUR: post_rollup_columns("hour_start"),
    POST_SURFACE_MINUTE: ("post_id", "window_start", "surface", "action", "views", "impressions", "version"),
    POSTS: ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags", "version"),
    SPACE_PRESENCE: ("space_id", "listener_id", "event_time", "event_time_ms", "action", "event_id"),
    ROLLUP_CHANGES: ("source", "key", "window_start", "changed_at"),
    SUBJECT_POSTS: ("subject_id", "post_id", "created_at", "version"),
    SUBJECT_ROLLUP: (
        "subject_id", "grain", "window_start", "subject_views", "subject_impressions", "posts_new", "posts_total",
        "views_of_posts_about", "impressions_of_posts_about", "combined_views", "impressions", "post_rows",
        "unique_viewers_sketch", "unique_viewers", "listeners", "peak_minute", "unique_listeners_sketch", "version",
    ),
    SUBJECT_REFRESH_STATE: ("subject_id", "changes_read_to", "refreshed_at", "version"),
    CHANGED_HOURS: ("hour_start", "reason", "rows", "noted_at"),
    HOUR_REPAIRS: ("hour_start", "covered_until", "repaired_at"),
    LEDGER_SCANS: ("scanned_at",),
    PSEUDONYM_KEY: ("key",),
    ERASED_VIEWERS: ("viewer_key", "erased_at", "request_id"),
    ERASURE_REQUESTS: ("request_id", "requested_by", "requested_at", "finished_at", "viewers", "hours",
                       "events_raw_rows", "space_presence_rows", "dead_letters_rows"),
    ERASURE_SWEEPS: ("swept_at",),
    DEAD_LETTERS: ("source_topic", "source_partition", "source_offset", "reason", "payload", "loaded_at"),
}
# On a ClickHouse cluster (pipelines/store/shapes.py; docs/scale-out.md, "One schema, two shapes")
# each table is either sharded, its rows spread over the shards by this key (a `_local` replicated
# table on every server and a Distributed table under the public name), or ON_EVERY_SERVER. A key is
# a hash (cityHash64 spreads any id pattern evenly, on 18.16 and current releases alike) of columns
# of the table's ORDER BY, so the copies a ReplacingMergeTree collapses always meet on one shard.
# Post-keyed tables share one key, so a post's archive, rollups, metadata, subject memberships and
# change notes are on the same shard: a per-shard query may join them (distributed_product_mode
# 'local') and a per-shard rebuild reads only its own archive. Presence is by Space: a minute's
# listeners are the sessions of one Space. Everything written by a subject's refresh is by subject.
_BY_POST = "cityHash64(post_id)"
SHARDING_KEYS: dict[str, str] = {
    EVENTS_RAW: _BY_POST, POST_MINUTE: _BY_POST, POST_HOUR: _BY_POST, POST_SURFACE_MINUTE: _BY_POST,
    POSTS: _BY_POST, SUBJECT_POSTS: _BY_POST,
    # key: a post id for post_minute's and posts' notes, a Space id for presence's: as their source.
    ROLLUP_CHANGES: "cityHash64(key)",
    SPACE_PRESENCE: "cityHash64(space_id)",
    SUBJECT_ROLLUP: "cityHash64(subject_id)", SUBJECT_REFRESH_STATE: "cityHash64(subject_id)",
    DEAD_LETTERS: "cityHash64(source_topic, source_partition, source_offset)",
    CHANGED_HOURS: "cityHash64(hour_start)", HOUR_REPAIRS: "cityHash64(hour_start)",
    LEDGER_SCANS: "cityHash64(scanned_at)", ERASURE_SWEEPS: "cityHash64(swept_at)",
    ERASURE_REQUESTS: "cityHash64(request_id)",
}
# Whole on every server (one replicated table, all servers its replicas, no Distributed table): read
# inside the subqueries of per-shard queries (`NOT IN (SELECT viewer_key FROM erased_viewers)`, the
# key's scalar subquery), where each shard must see all of them. Small: a key, the erased viewers.
ON_EVERY_SERVER = frozenset({PSEUDONYM_KEY, ERASED_VIEWERS})
# Tables the pipeline may write; identifiers in SQL text come only from here.
WRITABLE_TABLES = frozenset(TABLE_COLUMNS)
EVENTS_RAW_COLUMNS = TABLE_COLUMNS[EVENTS_RAW]
# Filled by the archive itself (migration 0011): whether the stream had closed the event's window
# when it was archived, and when the row was loaded. Writers leave them to their defaults.
EVENTS_RAW_ARCHIVE_COLUMNS = ("late", "loaded_at")
# Columns a table has beyond what its writers name (the registry test compares the rest).
FILLED_BY_CLICKHOUSE: dict[str, tuple[str, ...]] = {EVENTS_RAW: EVENTS_RAW_ARCHIVE_COLUMNS,
                                                     SPACE_PRESENCE: ("loaded_at",), PSEUDONYM_KEY: ("created_at",)}
POST_MINUTE_COLUMNS = TABLE_COLUMNS[POST_MINUTE]
POST_HOUR_COLUMNS = TABLE_COLUMNS[POST_HOUR]


@dataclass(frozen=True)
class Field:
    """A field of a job output: its name, its Flink SQL type, its type in a ClickHouse Kafka table."""

    name: str
    flink: str
    clickhouse: str


def _fields(*specs: str) -> tuple[Field, ...]:
    return tuple(Field(*spec.split()) for spec in specs)


@dataclass(frozen=True)
class Output:
    """One output of the job: a Kafka topic (`Topics.<topic>`) and the fields of its records.
    `table` is the ClickHouse table it ends in: loaded by ClickHouse's own Kafka engine when
    `clickhouse_loads`, else by pipelines.stream.loader. `wire` is how its records are written, by
    ClickHouse's name of the format: JSON, or RowBinary (no text to write or parse; jvm/:
    `clickhouse-rowbinary`) for an output only ClickHouse reads."""

    name: str
    topic: str
    fields: tuple[Field, ...]
    table: str
    clickhouse_loads: bool
    wire: str = "JSONEachRow"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


# The job's outputs. The high-volume ones (every valid event, every rollup row, every listener's
# presence) go from Kafka to ClickHouse without Python: ClickHouse's Kafka engine reads them
# (pipelines.stream.streams). Posts (nullable links) and dead letters (counted by reason) go through
# pipelines.stream.loader.
EVENTS_VALID = Output("events_valid", "events_valid", _fields(
    "event_type STRING String", "event_id STRING String", "event_time_ms BIGINT UInt64",
    "post_id BIGINT UInt64", "author_id BIGINT UInt64", "viewer_id BIGINT UInt64",
    "surface STRING String", "client STRING String", "action STRING String", "late TINYINT UInt8",
), EVENTS_RAW, clickhouse_loads=True, wire="RowBinary")
POST_MINUTE_ROWS = Output("post_minute", "post_minute", _fields(
    "post_id BIGINT UInt64", "window_start TIMESTAMP(3) String",
    *(f"{count} BIGINT UInt64" for count in POST_MINUTE_COUNTS), "deliveries BIGINT UInt64",
    "unique_viewers_sketch STRING String", "unique_viewers DOUBLE Float64", "version BIGINT UInt64",
), POST_MINUTE, clickhouse_loads=True)
POST_SURFACE_MINUTE_ROWS = Output("post_surface_minute", "post_surface_minute", _fields(
    "post_id BIGINT UInt64", "window_start TIMESTAMP(3) DateTime", "surface STRING String",
    "action STRING String", "views BIGINT UInt64", "impressions BIGINT UInt64", "version BIGINT UInt64",
), POST_SURFACE_MINUTE, clickhouse_loads=True, wire="RowBinary")
POSTS_VALID = Output("posts_valid", "posts_valid", _fields(
    "post_id BIGINT UInt64", "author_id BIGINT UInt64", "created_ms BIGINT UInt64", "reply_to BIGINT UInt64",
    "quote_of BIGINT UInt64", "links STRING String", "tags STRING String",
), POSTS, clickhouse_loads=False)
PRESENCE_VALID = Output("presence_valid", "presence_valid", _fields(
    "event_id STRING String", "event_time_ms BIGINT UInt64", "space_id BIGINT UInt64",
    "listener_id BIGINT UInt64", "action STRING String",
), SPACE_PRESENCE, clickhouse_loads=True)
DEAD_LETTER = Output("dead_letter", "dead_letter", _fields(
    "reason STRING String", "topic STRING String", "partition INT Int32", "offset BIGINT Int64",
    "payload STRING String",
), DEAD_LETTERS, clickhouse_loads=False)
OUTPUTS = (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, POSTS_VALID, PRESENCE_VALID)
# The fields of a valid counted event as the job carries it (the archive's `late` is decided at the sink).
VALID_EVENT_FIELDS = tuple(f for f in EVENTS_VALID.field_names if f != "late")

# How a record of an output loaded by ClickHouse becomes a row of its table: a ClickHouse
# expression over the Kafka table's columns per target column; a column not listed here takes the
# output's field of the same name (pipelines.stream.streams renders the materialized view).
LOAD_EXPRESSIONS: dict[str, dict[str, str]] = {
    EVENTS_VALID.name: {"event_time": "toDateTime(intDiv(event_time_ms, 1000))", "loaded_at": "now()"},
    POST_MINUTE_ROWS.name: {"window_start": "toDateTime(substring(window_start, 1, 19), 'UTC')",
                            "unique_viewers_sketch": "unhex(unique_viewers_sketch)"},
    PRESENCE_VALID.name: {"event_time": "toDateTime(intDiv(event_time_ms, 1000))", "loaded_at": "now()"},
}
