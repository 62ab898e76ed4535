"""The job's SQL text: decode, valid events, late marking, the archive, dead letters, the rollups.

The transformation alone, as SELECTs over named views, so the same functions build the job
(`pipelines.stream.rollup_job.build`) and run on in-memory rows (tests/unit/test_rollup_job.py).
Duplicates collapse inside the window (a duplicate is the same event_id with the same event_time,
so it always falls in the same window), and each post-minute row carries its viewers' DataSketches
HLL sketch, built in the job with the conventions of `pipelines.rollups.sketches`.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.config import Settings
from pipelines.ingest import schemas
from pipelines.rollups import sketches
from pipelines.store.tables import POST_MINUTE_COUNTS, POST_MINUTE_ROWS, PRESENCE_VALID, VALID_EVENT_FIELDS

# Event types whose events are counted per post and minute (posts are archived by a later job).
COUNTED_TYPES = ("view", "impression")
WINDOW = "INTERVAL '1' MINUTE"


def quoted(identifier: str) -> str:
    """Quote a Flink SQL identifier (`views`, `offset`, ... are reserved words)."""
    return "`" + identifier.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# The Flink column type of each schema kind (schemas.DECODABLE_KINDS).
FLINK_TYPES = {"integer": "BIGINT", "string": "STRING", "array": "STRING"}


def source_columns(event_type: str) -> str:
    """A source table's physical columns, as the viewcount-event format fills them."""
    spec = schemas.validation_spec(schemas.load_schema(event_type))
    columns = [f"{quoted(f['column'])} {FLINK_TYPES[f['kind']]}" for f in spec]
    return ", ".join(["reject_reason STRING", *columns, "payload STRING"])


def watermark_sql(settings: Settings, floor_ms: int | None = None) -> str:
    """The watermark: an event's time, but never past its record's Kafka time (+ the lead), less
    the delay; and never below `floor_ms` (the stream's windows already written, see
    `watermark_floor_ms`), so that a restarted job cannot open a window it has already closed."""
    own = (f"LEAST(event_time, kafka_time + INTERVAL '{int(settings.watermark_max_lead_s)}' SECOND) "
           f"- INTERVAL '{int(settings.watermark_delay_s)}' SECOND")
    return own if floor_ms is None else f"GREATEST({own}, TO_TIMESTAMP_LTZ({int(floor_ms)}, 3))"


def decode_sql(event_type: str, source_table: str, settings: Settings) -> str:
    """SELECT over a source table: reject_reason (the format's, or an implausible time), the
    schema's fields typed, the event time, the payload and the Kafka origin."""
    columns = ", ".join(quoted(schemas.column_of(f)) for f in schemas.fields(event_type))
    time_reason = (f"implausible_time(event_time_ms, kafka_time, {int(settings.event_max_future_s)}, "
                   f"{int(settings.event_max_age_s)})")
    return (
        f"SELECT CAST({_literal(event_type)} AS STRING) AS event_type, "
        f"COALESCE(reject_reason, {time_reason}) AS reject_reason, {columns}, event_time, payload, "
        f"{quoted('topic')}, {quoted('partition')}, {quoted('offset')} FROM {quoted(source_table)}"
    )


def valid_events_sql(decoded_views: dict[str, str]) -> str:
    """UNION ALL of the valid counted events, in VALID_EVENT_FIELDS order plus event_time."""
    selects = []
    for event_type, view in decoded_views.items():
        fields = {schemas.column_of(f) for f in schemas.fields(event_type)}
        columns = [
            quoted(c) if c in fields or c == "event_type" else f"'' AS {quoted(c)}"
            for c in VALID_EVENT_FIELDS
        ]
        selects.append(
            f"SELECT {', '.join(columns)}, event_time FROM {quoted(view)} WHERE reject_reason IS NULL"
        )
    return " UNION ALL ".join(selects)


# An event is late when the window it belongs to has already fired: a window fires once the
# watermark reaches its last millisecond (window end - 1 ms). The watermark here is the one the
# windows downstream see, or ahead of theirs (with parallelism, a window takes the least of its
# inputs'), so every event a window drops is marked; at most an event at the very edge is marked
# and still counted, which costs a needless repair of its hour, never a wrong figure.
# Written on event_time_ms: the planner inlines event_time's function at every use. Before the
# first watermark CURRENT_WATERMARK is NULL, and so is the comparison: not late by the watermark.
WINDOW_LAST_MS_SQL = "event_time_ms - MOD(event_time_ms, 60000) + 59999"
LATE_SQL = f"TO_TIMESTAMP_LTZ({WINDOW_LAST_MS_SQL}, 3) <= CURRENT_WATERMARK(event_time)"


def late_sql(watermark_floor: int | None) -> str:
    """1 when the event's window has already fired: by the watermark, or (a restarted job) by the
    floor of `watermark_floor_ms`. The floor is checked on its own because the watermark is emitted
    periodically: the records read before a restarted job's first watermark see none, and would
    open a written window again with only themselves in it (seen in a replay: 7 of 36 views)."""
    late = LATE_SQL if watermark_floor is None else f"({LATE_SQL}) OR {WINDOW_LAST_MS_SQL} <= {int(watermark_floor)}"
    return f"CASE WHEN {late} THEN 1 ELSE 0 END"


def archive_sql(valid_events_view: str, watermark_floor: int | None = None) -> str:
    """The archive's records: every valid counted event, with `late` (1: the stream had already
    closed its window, so only a repair of its hour counts it; pipelines.repair.ledger)."""
    columns = ", ".join(quoted(c) for c in VALID_EVENT_FIELDS)
    return f"SELECT {columns}, CAST({late_sql(watermark_floor)} AS TINYINT) AS late FROM {quoted(valid_events_view)}"


def windowed_events_sql(valid_events_view: str, watermark_floor: int | None) -> str:
    """The events the windows count: all valid ones, less those of windows already written before
    a restart (`late_sql`); the watermark drops the rest of the late ones."""
    where = "" if watermark_floor is None else f" WHERE {WINDOW_LAST_MS_SQL} > {int(watermark_floor)}"
    return f"SELECT * FROM {quoted(valid_events_view)}{where}"


def dead_letter_sql(decoded_views: Iterable[str]) -> str:
    return " UNION ALL ".join(
        f"SELECT reject_reason AS reason, {quoted('topic')}, {quoted('partition')}, {quoted('offset')}, payload "
        f"FROM {quoted(view)} WHERE reject_reason IS NOT NULL"
        for view in decoded_views
    )


def post_windows_sql(valid_events_view: str) -> str:
    """Per post and 1-minute event-time window, one aggregation for both rollups (`post_window`,
    jvm/src/dev/viewcount/flink/PostWindow.java): `counts` holds the views and impressions
    (deduplicated on event_id) in total and per surface and action, and the raw deliveries behind
    them; `viewers` the sketch of the distinct viewers of its views (hex of its compact bytes, with its
    estimate). Versioned by the time it is emitted."""
    return f"""
SELECT post_id, window_start, counts,
  viewer_sketch(counts.viewers, {sketches.LG_K}, {_literal(sketches.TARGET_TYPE_NAME)}) AS viewers,
  emit_version() AS version
FROM (
  SELECT post_id, window_start, post_window(event_id, event_type, surface, action, viewer_id) AS counts
  FROM TABLE(TUMBLE(TABLE {quoted(valid_events_view)}, DESCRIPTOR(event_time), {WINDOW}))
  GROUP BY post_id, window_start, window_end
)
"""


def post_minute_sql(post_windows_view: str) -> str:
    """The post-minute rows of `post_windows_sql`'s windows: the counts `post_window` names as the
    registry does (POST_MINUTE_COUNTS), and the deliveries behind them."""
    counts = ", ".join(f"counts.{quoted(name)} AS {quoted(name)}" for name in (*POST_MINUTE_COUNTS, "deliveries"))
    return (f"SELECT post_id, window_start, {counts}, "
            f"viewers.sketch AS unique_viewers_sketch, viewers.estimate AS unique_viewers, version "
            f"FROM {quoted(post_windows_view)}")


# The Kafka key of each record of the outputs the change feed follows (pipelines.stream.change_feed):
# the key of what the record changes and its minute, as text, "<post id> <window start>" and
# "<Space id> <minute start, ms since the epoch>". The feed reads these bytes, not the records: one
# key a post-minute row, a few distinct keys a minute however many listeners come and go. Keyed, a
# post-minute row's versions also land in one partition, in order.
CHANGE_KEY = "change_key"
CHANGE_KEYS = {
    POST_MINUTE_ROWS.name: "CAST(post_id AS STRING) || ' ' || CAST(window_start AS STRING)",
    PRESENCE_VALID.name: "CAST(space_id AS STRING) || ' ' || CAST(event_time_ms - MOD(event_time_ms, 60000) AS STRING)",
}


def keyed_sql(output_name: str, select: str) -> str:
    """`select` with the change key of its output's records as a last column, if it has one."""
    key = CHANGE_KEYS.get(output_name)
    return select if key is None else f"SELECT *, {key} AS {CHANGE_KEY} FROM ({select})"


def post_surface_minute_sql(post_windows_view: str) -> str:
    """Per post, 1-minute window, surface and action: views and impressions, deduplicated; the rows
    of `post_windows_sql`'s windows, each window's surfaces unnested."""
    return (f"SELECT w.post_id, w.window_start, s.surface, s.action, s.{quoted('views')}, s.impressions, w.version "
            f"FROM {quoted(post_windows_view)} AS w "
            f"CROSS JOIN UNNEST(w.counts.surfaces) AS s (surface, action, {quoted('views')}, impressions)")
