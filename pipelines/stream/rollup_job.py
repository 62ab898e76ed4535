"""The streaming job: decode + validate, exact dedupe, 1-minute event-time windows, rollups.

Everything runs as Flink SQL on the JVM (no per-row Python). Each source record is decoded once,
by our `viewcount-event` format (jvm/: typed columns, the reject reason and the payload in one pass
over its bytes, with rules generated from schemas/*.json); an event time implausible against the
record's Kafka time is a reject too, and never moves the watermark. Duplicates collapse inside the
window (a duplicate is the same event_id with the same event_time, so it always falls in the same
window), and each post-minute row carries its viewers' DataSketches HLL sketch, built in the job
with the conventions of `pipelines.rollups.sketches`.

Outputs go to Kafka with Flink's exactly-once (transactional) sink, committed on checkpoints:
dead letters, validated events for the archive, post-minute and post-surface-minute rollups, and
the validated post creations and Space presence events. ClickHouse's Kafka engine loads the archive
and the rollups itself (`pipelines.stream.streams`); `pipelines.stream.loader` upserts the rest. Kept apart:
the transformation (`decode_sql`, `post_minute_sql`, ..., testable on in-memory rows), the Kafka
wiring (`build`, `submit`) and the running of a job (`pipelines.stream.runner`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipelines.config import EVENT_TYPES, Settings
from pipelines.ingest import schemas
from pipelines.rollups import sketches
from pipelines.store.tables import (
    BACKFILL_VERSION_BASE,
    DEAD_LETTER,
    EVENTS_VALID,
    OUTPUTS,
    POST_MINUTE_ROWS,
    POST_SURFACE_MINUTE_ROWS,
    POSTS_VALID,
    PRESENCE_VALID,
    VALID_EVENT_FIELDS,
    Output,
)
from pipelines.stream import flink_rest

log = logging.getLogger("viewcount.rollup_job")

# Event types whose events are counted per post and minute (posts are archived by a later job).
COUNTED_TYPES = ("view", "impression")
WINDOW = "INTERVAL '1' MINUTE"
EVENT_FORMAT = "viewcount-event"  # jvm/: dev.viewcount.flink.EventFormatFactory


def quoted(identifier: str) -> str:
    """Quote a Flink SQL identifier (`views`, `offset`, ... are reserved words)."""
    return "`" + identifier.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# Java functions of jvm/ (built into the job's UDF jar by `make jars`).
JAVA_FUNCTIONS = {
    "event_time_of": "dev.viewcount.flink.PlausibleTime",
    "implausible_time": "dev.viewcount.flink.TimeReason",
    "viewer_sketch": "dev.viewcount.flink.ViewerSketch",
    "emit_version": "dev.viewcount.flink.EmitVersion",
}
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


def watermark_floor_ms(client) -> int | None:
    """The last millisecond of the newest window the stream has written to post_minute (None when
    it has written none). Flink does not keep watermarks in its checkpoints: a restarted job's
    watermark starts from nothing, and an event already late before the restart (or a replayed
    one) would open its fired window again and overwrite the row with only itself in it. Every
    row in ClickHouse was committed by a completed checkpoint, whose watermark was past that
    window's end, so starting the watermark there loses no window still open in the restored state;
    what arrives for an older window is marked late and repaired (pipelines.repair.ledger)."""
    ((newest,),) = client.execute(
        "SELECT toUInt64(max(window_start)) FROM post_minute WHERE version < %(backfill)s",
        {"backfill": BACKFILL_VERSION_BASE})
    return newest * 1000 + 60_000 - 1 if newest else None


def event_source_ddl(table: str, event_type: str, origin_columns: str, options: dict[str, str],
                     settings: Settings, watermark_floor: int | None = None) -> str:
    """A source of decoded events with their origin columns (topic, partition, offset, kafka_time)
    and the event-time watermark every window is cut by."""
    spec_text = json.dumps(schemas.validation_spec(schemas.load_schema(event_type)), separators=(",", ":"))
    options = {**options, "format": EVENT_FORMAT, f"{EVENT_FORMAT}.spec": spec_text,
               f"{EVENT_FORMAT}.max-record-bytes": str(settings.max_event_bytes)}
    return f"""
CREATE TABLE {quoted(table)} (
  {source_columns(event_type)},{origin_columns},
  -- A rejected record, or one with an implausible time, never moves the watermark (epoch 0).
  event_time AS event_time_of(reject_reason, event_time_ms, kafka_time, {int(settings.event_max_future_s)},
                              {int(settings.event_max_age_s)}),
  WATERMARK FOR event_time AS {watermark_sql(settings, watermark_floor)}
) WITH ({_options(options)})"""


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
    return f"SELECT {columns}, CAST({late_sql(watermark_floor)} AS INT) AS late FROM {quoted(valid_events_view)}"


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


def post_minute_sql(valid_events_view: str) -> str:
    """Per post and 1-minute event-time window: views, impressions (both exact, deduplicated on
    event_id), the raw deliveries behind them, and the sketch of the distinct viewers of its views
    (hex of its compact bytes, with its estimate), versioned by the time it is emitted."""
    return f"""
SELECT post_id, window_start, {quoted('views')}, impressions, deliveries,
  viewers.sketch AS unique_viewers_sketch, viewers.estimate AS unique_viewers,
  emit_version() AS version
FROM (
  SELECT post_id, window_start,
    COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'view') AS {quoted('views')},
    COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'impression') AS impressions,
    COUNT(*) AS deliveries,
    viewer_sketch(ARRAY_AGG(DISTINCT viewer_id) FILTER (WHERE event_type = 'view'), {sketches.LG_K},
                  {_literal(sketches.TARGET_TYPE_NAME)}) AS viewers
  FROM TABLE(TUMBLE(TABLE {quoted(valid_events_view)}, DESCRIPTOR(event_time), {WINDOW}))
  GROUP BY post_id, window_start, window_end
)
"""


def post_surface_minute_sql(valid_events_view: str) -> str:
    """Per post, 1-minute window, surface and action: views and impressions, deduplicated."""
    return f"""
SELECT post_id, window_start, surface, action,
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'view') AS {quoted('views')},
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'impression') AS impressions,
  emit_version() AS version
FROM TABLE(TUMBLE(TABLE {quoted(valid_events_view)}, DESCRIPTOR(event_time), {WINDOW}))
GROUP BY post_id, window_start, window_end, surface, action
"""


KAFKA_ORIGIN_COLUMNS = f"""
  {quoted('topic')} STRING METADATA VIRTUAL,
  {quoted('partition')} INT METADATA VIRTUAL,
  {quoted('offset')} BIGINT METADATA VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL"""


def job_group_id(settings: Settings) -> str:
    """The job's Kafka consumer group: its committed offsets are the job's progress."""
    return f"{settings.topics.prefix}.{settings.job_name}"


def source_ddl(settings: Settings, table: str, event_type: str, bounded: bool,
               watermark_floor: int | None = None) -> str:
    options = {
        "connector": "kafka",
        "topic": settings.topics.source(event_type),
        "properties.bootstrap.servers": settings.kafka_bootstrap,
        "properties.group.id": job_group_id(settings),
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "earliest",
    }
    # A bounded run is still a streaming source, ended by EndOfInput + drain(), not by
    # scan.bounded.mode: a bounded Kafka source restored from a checkpoint never finishes
    # (FLINK-31006: the restored enumerator never signals "no more splits"), and a restore
    # after a crash is exactly when a bounded run must finish.
    if not bounded and settings.source_idle_timeout_s:
        # Live, a partition without traffic must not hold every window open. Never when
        # catching up: a partition merely waiting for its turn to be read would be declared
        # idle, the watermark would pass it, and its events would all arrive late (measured:
        # at 5 s, 94 % of the night's views were dropped as late in a bounded run).
        options["scan.watermark.idle-timeout"] = f"{settings.source_idle_timeout_s} s"
    return event_source_ddl(table, event_type, KAFKA_ORIGIN_COLUMNS, options, settings, watermark_floor)


def kafka_sink_ddl(settings: Settings, output: Output, blackhole: bool = False, exactly_once: bool = True) -> str:
    """The sink of one output. `blackhole` and `exactly_once=False` exist for the benchmarks of what
    the sinks cost (bench.pipeline, bench.ceiling's ladder); the job always writes exactly once."""
    columns = ", ".join(f"{quoted(f.name)} {f.flink}" for f in output.fields)
    if blackhole:
        return f"CREATE TABLE {quoted(output.name)} ({columns}) WITH ('connector' = 'blackhole')"
    guarantee = {
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": f"{settings.topics.prefix}.{settings.job_name}.{output.name}",
        "properties.transaction.timeout.ms": "600000",
    } if exactly_once else {"sink.delivery-guarantee": "at-least-once"}
    options = {
        "connector": "kafka",
        "topic": getattr(settings.topics, output.topic),
        "properties.bootstrap.servers": settings.kafka_bootstrap,
        "format": "json",
        **guarantee,
        "properties.max.request.size": "67108864",
        "properties.compression.type": "lz4",
        # Batch records: one send per record costs more than the decode (measured: 29 s -> 22 s
        # per million validated events on this 2-core box).
        "properties.linger.ms": "50",
        "properties.batch.size": "1048576",
    }
    return f"CREATE TABLE {quoted(output.name)} ({columns}) WITH ({_options(options)})"


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{_literal(k)} = {_literal(v)}" for k, v in options.items())


SAVEPOINTS = "savepoints"


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed restore point under the job's folder: a retained checkpoint
    (`<job id>/chk-<n>/_metadata`) or the savepoint a drained run ended with."""
    completed = [*checkpoint_dir.glob("*/chk-*/_metadata"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*/_metadata")]
    if not completed:
        return None
    return max(completed, key=lambda p: p.stat().st_mtime_ns).parent


def prune_restore_points(checkpoint_dir: Path, keep: Path) -> list[Path]:
    """Delete every restore point but `keep` (the one a job is starting from): the folders of
    earlier jobs' retained checkpoints and earlier savepoints. Returns what it deleted."""
    import shutil

    kept = keep if keep.parent.name == SAVEPOINTS else keep.parent
    stale = [d for d in (*checkpoint_dir.glob("*"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*"))
             if d.is_dir() and d.name != SAVEPOINTS and d != kept]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


class EndOfInput:
    """The source topics' end offsets when a bounded run starts, and whether the job has consumed
    up to them: by what its Kafka sources have handed on (`follow`, read from Flink's REST API,
    pipelines.stream.flink_rest) or, where that is not known, by the offsets the source commits
    to the consumer group on every completed checkpoint (which lag up to 10 s behind at the end).
    Either way every event before the end is ahead of the barrier of a drain started after it.
    Clients write the source topics without transactions: a transaction's closing marker would
    sit past the last committed offset."""

    def __init__(self, settings: Settings):
        from pipelines.stream.kafka import TopicEnds

        self.settings = settings
        self.topics = [settings.topics.source(t) for t in EVENT_TYPES]
        self._ends = TopicEnds(settings, job_group_id(settings), self.topics)
        self.ends = self._ends.ends
        self._positions = None
        self._committed_left, self._committed_since = None, time.monotonic()
        self._asked_at, self._read = float("-inf"), {}

    def follow(self, job_id: str) -> None:
        """Read the job's source positions from now on (its id, once it is submitted)."""
        from pipelines.stream.flink_rest import SourcePositions

        self._positions = SourcePositions(self.settings, str(job_id), self.topics)

    def remaining(self) -> int:
        """Events between the job's position and the ends (0: consumed up to the end). The REST
        API is asked only once the commits have stood still for a checkpoint interval and a second
        (the stall at the end): its metrics cost the job's JVM CPU to gather, so not on every call."""
        left, now = self._ends.remaining(), time.monotonic()
        if left != self._committed_left:
            self._committed_left, self._committed_since = left, now
        stalled = now - self._committed_since > self.settings.checkpoint_interval_ms / 1000 + 1
        if not left or self._positions is None or not stalled:
            return left
        if now - self._asked_at >= 1.0:
            self._asked_at, self._read = now, self._positions.read()
        return self._ends.remaining(self._read)

    def close(self) -> None:
        self._ends.close()


def drain(job_client, settings: Settings):
    """Stop the job with a savepoint after a final watermark at the end of time: every open
    window fires and every sink commits, then the job finishes. Returns the future of the
    savepoint's path, which the next run restores from."""
    from pyflink.common.completable_future import CompletableFuture
    from pyflink.java_gateway import get_gateway

    target = (settings.checkpoint_dir / SAVEPOINTS).resolve()
    # PyFlink's JobClient.stop_with_savepoint still calls the Flink 1.x signature, which Flink 2
    # removed; call the Java client with the savepoint format it now requires.
    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return CompletableFuture(job_client._j_job_client.stopWithSavepoint(True, target.as_uri(), canonical), str)


def run_to_end(result, settings: Settings, end: EndOfInput, on_progress=None, poll_s: float = 1.0) -> str:
    """The job alone as a bounded run: wait until it has consumed up to `end` (calling
    on_progress(remaining) on every poll), drain it, wait for it to finish. Returns the
    savepoint's path. (`pipelines.stream.runner` does the same with the loader beside it.)"""
    job = result.get_job_client()
    end.follow(job.get_job_id())
    while remaining := end.remaining():
        if on_progress is not None:
            on_progress(remaining)
        if job.get_job_status().result().is_globally_terminal_state():
            result.wait()  # raises with the job's failure
            raise RuntimeError(f"the Flink job ended with {remaining} source records still unread")
        time.sleep(poll_s)
    savepoint = drain(job, settings).result()
    result.wait()
    return savepoint


def job_jars(settings: Settings) -> list[Path]:
    """What the job's classloader needs beside Flink: the Kafka connector, our functions and format,
    and their dependencies (the DataSketches jars)."""
    return [settings.connector_jar, settings.udf_jar, *settings.udf_dependency_jars]


# The local mini-cluster's servers listen on loopback only (docs/access.md, "Listeners"): only
# this process talks to them (the job client is in-process; the Kafka connector only connects
# out). Flink binds each of them to every address unless told otherwise. Its RPC is in-process
# (no socket) on a mini-cluster; queryable state is off (and its runtime is not in the wheel).
LOOPBACK = "127.0.0.1"
MINI_CLUSTER_BIND_OPTIONS = {
    "jobmanager.bind-host": LOOPBACK,  # the blob server
    "rest.bind-address": LOOPBACK,  # the REST endpoint and web UI
    "rest.address": LOOPBACK,  # the address the REST endpoint advertises (else "localhost")
    "taskmanager.bind-host": LOOPBACK,  # the shuffle (netty) servers: only with 2+ TaskManagers
}
# PyFlink runs Python functions on a local mini-cluster through a gRPC "worker pool" in this
# process, bound to every address ('[::]:0' in pyflink's BeamFnLoopbackWorkerPoolServicer.start,
# no option) and started by TableEnvironment's constructor whenever the target is local, which it
# is at creation even for a --cluster run. The job has no Python function, so it never needs one;
# in "process" mode PyFlink does not start it (a Python function would then run in a process the
# JVM starts, its Beam servers on loopback).
PYTHON_WORKER_MODE = ("_python_worker_execution_mode", "process")


def table_environment(settings: Settings, restore: bool = True):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    # Read by TableEnvironment's constructor (TableEnvironment._open): it must be set before.
    os.environ[PYTHON_WORKER_MODE[0]] = PYTHON_WORKER_MODE[1]
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    checkpoint_dir = settings.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if settings.flink_cluster:
        # A standalone session cluster (make cluster-up, or any other): the job's jars travel with
        # it; its parallelism must be set here (the cluster's default is not the client's).
        host, _, port = settings.flink_cluster.rpartition(":")
        config.set("execution.target", "remote")
        config.set("rest.address", host or "127.0.0.1")
        config.set("rest.port", port)
    else:
        # The local mini-cluster runs in this process's JVM: its servers listen on loopback only.
        for key, value in MINI_CLUSTER_BIND_OPTIONS.items():
            config.set(key, value)
        config.set("rest.bind-port", str(flink_rest.mini_cluster_rest_port()))
        # The REST API's metrics are a copy refreshed this often (10 s by default): a bounded run
        # reads its sources' positions there.
        config.set("metrics.fetcher.update-interval", "500 ms")
    config.set("pipeline.name", f"viewcount-rollups ({settings.topics.prefix}.{settings.job_name})")
    config.set("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in job_jars(settings)))
    config.set("parallelism.default", str(settings.parallelism))
    config.set("pipeline.object-reuse", "true")
    config.set("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
    config.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    config.set("execution.checkpointing.dir", checkpoint_dir.resolve().as_uri())
    config.set("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set("execution.checkpointing.num-retained", "2")
    # Window starts are UTC: the session time zone decides how TIMESTAMP_LTZ windows are cut.
    config.set("table.local-time-zone", "UTC")
    if restore and (checkpoint := latest_checkpoint(checkpoint_dir)) is not None:
        # After a crash (kill -9) the new process continues from the last completed checkpoint:
        # window state, Kafka offsets and the open sink transactions all come back together.
        log.info("restoring from checkpoint %s", checkpoint)
        config.set("execution.state-recovery.path", checkpoint.resolve().as_uri())
        # Only the newest restore point is ever used: without this, every run would leave its
        # retained checkpoints and savepoint behind for good.
        prune_restore_points(checkpoint_dir, keep=checkpoint)
    return t_env


def register_functions(t_env) -> None:
    for name, java_class in JAVA_FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION {name} AS '{java_class}' LANGUAGE JAVA")


def build(t_env, settings: Settings, bounded: bool, blackhole: bool = False, watermark_floor: int | None = None,
          outputs: Iterable[Output] = OUTPUTS, exactly_once: bool = True):
    """Register sources, views and sinks; return the statement set of the job's outputs
    (blackhole: every sink discards its rows, to measure the job without them; watermark_floor:
    `watermark_floor_ms`). `outputs` and `exactly_once` let a benchmark leave outputs out or write
    them at least once (bench.ceiling)."""
    register_functions(t_env)
    decoded = {}
    for event_type in EVENT_TYPES:
        source = f"source_{event_type}"
        t_env.execute_sql(source_ddl(settings, source, event_type, bounded, watermark_floor))
        decoded[event_type] = f"decoded_{event_type}"
        t_env.execute_sql(
            f"CREATE TEMPORARY VIEW {quoted(decoded[event_type])} AS {decode_sql(event_type, source, settings)}")
    counted = {t: decoded[t] for t in COUNTED_TYPES}
    t_env.execute_sql(f"CREATE TEMPORARY VIEW valid_events AS {valid_events_sql(counted)}")
    windowed = windowed_events_sql("valid_events", watermark_floor)
    t_env.execute_sql(f"CREATE TEMPORARY VIEW windowed_events AS {windowed}")
    # Posts pass straight through (no window): attribution to a subject happens where the
    # whole reply/quote tree is known, so a post arriving after its views is still counted.
    inserts = {
        DEAD_LETTER: dead_letter_sql(decoded.values()),
        EVENTS_VALID: archive_sql("valid_events", watermark_floor),
        POST_MINUTE_ROWS: post_minute_sql("windowed_events"),
        POST_SURFACE_MINUTE_ROWS: post_surface_minute_sql("windowed_events"),
        POSTS_VALID: f"SELECT post_id, author_id, event_time_ms, reply_to, quote_of, links, tags "
                     f"FROM {quoted(decoded['post'])} WHERE reject_reason IS NULL",
        PRESENCE_VALID: f"SELECT event_id, event_time_ms, space_id, listener_id, action "
                        f"FROM {quoted(decoded['presence'])} WHERE reject_reason IS NULL",
    }
    statements = t_env.create_statement_set()
    for output in OUTPUTS:
        if output in outputs:
            t_env.execute_sql(kafka_sink_ddl(settings, output, blackhole, exactly_once))
            statements.add_insert_sql(f"INSERT INTO {output.name} {inserts[output]}")
    return statements


def submit(settings: Settings, bounded: bool, blackhole: bool = False, watermark_floor: int | None = None):
    """Start the job on the local mini-cluster (or the configured cluster); returns its TableResult."""
    t_env = table_environment(settings)
    return build(t_env, settings, bounded, blackhole, watermark_floor).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the viewcount rollup job alone (Flink SQL on PyFlink).")
    parser.add_argument("--bounded", action="store_true",
                        help="read the topics up to their current end, close every window, then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    settings = Settings.from_env()
    end = EndOfInput(settings) if args.bounded else None
    result = submit(settings, bounded=args.bounded)
    log.info("job submitted: %s", result.get_job_client().get_job_id())
    if end is None:
        result.wait()
        return 0
    try:
        log.info("consumed up to the end; savepoint %s", run_to_end(result, settings, end))
    finally:
        end.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
