"""The streaming job: decode + validate, exact dedupe, 1-minute event-time windows, rollups.

Everything runs as Flink SQL on the JVM (no per-row Python): the decode and the reject reasons
are generated from schemas/*.json, duplicates collapse inside the window (a duplicate is the same
event_id with the same event_time, so it always falls in the same window), and each post-minute
row carries the distinct viewer ids, which the loader turns into a DataSketches HLL sketch.

Outputs go to Kafka with Flink's exactly-once (transactional) sink, committed on checkpoints:
dead letters, validated events for the archive, post-minute rollups, and the validated post
creations and Space presence events. `pipelines.loader` upserts them into ClickHouse. Kept apart: `decode_sql` / `post_minute_sql` (the transformation,
testable on in-memory rows) and `run` (the Kafka wiring).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipelines import schemas
from pipelines.config import EVENT_TYPES, Settings

log = logging.getLogger("viewcount.rollup_job")

# Event types whose events are counted per post and minute (posts are archived by a later job).
COUNTED_TYPES = ("view", "impression")
WINDOW = "INTERVAL '1' MINUTE"
# Columns of a validated event, the archive's row; action is empty for views.
VALID_EVENT_COLUMNS = (
    "event_type", "event_id", "event_time_ms", "post_id", "author_id", "viewer_id",
    "surface", "client", "action",
)


def q(identifier: str) -> str:
    """Quote a Flink SQL identifier (`views`, `offset`, ... are reserved words)."""
    return "`" + identifier.replace("`", "``") + "`"


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# Java functions of jvm/ (built into the job's UDF jar by `make jars`).
JAVA_FUNCTIONS = {
    "json_fields": "dev.viewcount.flink.JsonFields",
    "json_long": "dev.viewcount.flink.JsonLong",
}
# Hints added to a missing-field reason, where the absence has a meaning of its own.
MISSING_HINTS = {"viewer_id": " (logged-out traffic is not counted)"}
FLINK_TYPES = {"integer": "BIGINT", "string": "STRING", "array": "STRING"}


def validation_spec(schema: dict) -> list[dict]:
    """The schema's rules in the form json_fields (jvm/) enforces: one entry per field, in order."""
    required = set(schema.get("required", []))
    spec = []
    for name, rules in schema["properties"].items():
        types = rules.get("type")
        kinds = [t for t in ([types] if isinstance(types, str) else types) if t != "null"]
        if len(kinds) != 1 or kinds[0] not in FLINK_TYPES:
            raise ValueError(f"schema field {name!r} has a type the job cannot decode: {types}")
        entry = {"name": name, "kind": kinds[0], "required": name in required}
        entry.update({k: rules[k] for k in ("enum", "minimum", "minLength", "maxLength") if k in rules})
        if name in MISSING_HINTS:
            entry["missingHint"] = MISSING_HINTS[name]
        spec.append(entry)
    return spec


def decode_sql(event_type: str, source_table: str) -> str:
    """SELECT over a raw source table: reject_reason, the schema's fields typed, Kafka origin."""
    spec = validation_spec(schemas.load_schema(event_type))
    columns = [
        f"CAST(fields.f{i} AS {FLINK_TYPES[field['kind']]}) AS "
        + q(field["name"] + "_ms" if field["name"] == "event_time" else field["name"])
        for i, field in enumerate(spec)
    ]
    spec_text = json.dumps(spec, separators=(",", ":"))
    parsed = (
        f"SELECT json_fields(payload, {_literal(spec_text)}) AS fields, payload, {q('topic')}, "
        f"{q('partition')}, {q('offset')}, event_time FROM {q(source_table)}"
    )
    return (
        f"SELECT CAST({_literal(event_type)} AS STRING) AS event_type, fields.reason AS reject_reason, "
        + ", ".join(columns)
        + f", event_time, payload, {q('topic')}, {q('partition')}, {q('offset')} FROM ({parsed})"
    )


def valid_events_sql(decoded_views: dict[str, str]) -> str:
    """UNION ALL of the valid counted events, in VALID_EVENT_COLUMNS order plus event_time."""
    selects = []
    for event_type, view in decoded_views.items():
        fields = set(schemas.fields(event_type))
        columns = [
            q(c) if c in fields or c in ("event_type", "event_time_ms") else f"'' AS {q(c)}"
            for c in VALID_EVENT_COLUMNS
        ]
        selects.append(
            f"SELECT {', '.join(columns)}, event_time FROM {q(view)} WHERE reject_reason IS NULL"
        )
    return " UNION ALL ".join(selects)


def dead_letter_sql(decoded_views: Iterable[str]) -> str:
    return " UNION ALL ".join(
        f"SELECT reject_reason AS reason, {q('topic')}, {q('partition')}, {q('offset')}, payload "
        f"FROM {q(view)} WHERE reject_reason IS NOT NULL"
        for view in decoded_views
    )


def post_minute_sql(valid_events_view: str) -> str:
    """Per post and 1-minute event-time window: views, impressions (both exact, deduplicated on
    event_id), the raw deliveries behind them, and the distinct viewers of its views."""
    return f"""
SELECT post_id, window_start,
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'view') AS {q('views')},
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'impression') AS impressions,
  COUNT(*) AS deliveries,
  ARRAY_AGG(DISTINCT viewer_id) FILTER (WHERE event_type = 'view') AS viewer_ids
FROM TABLE(TUMBLE(TABLE {q(valid_events_view)}, DESCRIPTOR(event_time), {WINDOW}))
GROUP BY post_id, window_start, window_end
"""


KAFKA_ORIGIN_COLUMNS = f"""
  {q('topic')} STRING METADATA VIRTUAL,
  {q('partition')} INT METADATA VIRTUAL,
  {q('offset')} BIGINT METADATA VIRTUAL,
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL"""


def raw_source_ddl(
    table: str, origin_columns: str, options: dict[str, str], watermark_delay_s: int,
    fallback_time: str = "kafka_time",
) -> str:
    """A source of raw event payloads with their origin columns (topic, partition, offset) and
    the event-time watermark every window is cut by."""
    return f"""
CREATE TABLE {q(table)} (
  payload STRING,{origin_columns},
  -- A record without a readable event_time goes to the dead letters; its Kafka time only keeps
  -- the watermark well-defined.
  event_time AS COALESCE(TO_TIMESTAMP_LTZ(json_long(payload, 'event_time'), 3), {fallback_time}),
  WATERMARK FOR event_time AS event_time - INTERVAL '{int(watermark_delay_s)}' SECOND
) WITH ({_options(options)})"""


def post_surface_minute_sql(valid_events_view: str) -> str:
    """Per post, 1-minute window, surface and action: views and impressions, deduplicated."""
    return f"""
SELECT post_id, window_start, surface, action,
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'view') AS {q('views')},
  COUNT(DISTINCT event_id) FILTER (WHERE event_type = 'impression') AS impressions
FROM TABLE(TUMBLE(TABLE {q(valid_events_view)}, DESCRIPTOR(event_time), {WINDOW}))
GROUP BY post_id, window_start, window_end, surface, action
"""


def job_group_id(settings: Settings) -> str:
    """The job's Kafka consumer group: its committed offsets are the job's progress."""
    return f"{settings.topics.prefix}.{settings.job_name}"


def source_ddl(settings: Settings, table: str, topic: str, bounded: bool) -> str:
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": settings.kafka_bootstrap,
        "properties.group.id": job_group_id(settings),
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "earliest",
        "format": "raw",
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
    return raw_source_ddl(table, KAFKA_ORIGIN_COLUMNS, options, settings.watermark_delay_s)


def kafka_sink_ddl(settings: Settings, table: str, topic: str, columns: str, blackhole: bool = False) -> str:
    if blackhole:  # the benchmark of the job without its sinks (bench.pipeline)
        return f"CREATE TABLE {q(table)} ({columns}) WITH ('connector' = 'blackhole')"
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": settings.kafka_bootstrap,
        "format": "json",
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": f"{settings.topics.prefix}.{table}",
        "properties.transaction.timeout.ms": "600000",
        "properties.max.request.size": "67108864",
        "properties.compression.type": "lz4",
        # Batch records: one send per record costs more than the decode (measured: 29 s -> 22 s
        # per million validated events on this 2-core box).
        "properties.linger.ms": "50",
        "properties.batch.size": "1048576",
    }
    return f"CREATE TABLE {q(table)} ({columns}) WITH ({_options(options)})"


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
    up to them: the Kafka source commits its offsets to the consumer group on every completed
    checkpoint, so a committed offset at the end means every event before it is in the job's
    checkpointed state (or already in its outputs). Clients write the source topics without
    transactions: a transaction's closing marker would sit past the last committed offset."""

    def __init__(self, settings: Settings):
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap, "group.id": job_group_id(settings),
            "enable.auto.commit": False, "isolation.level": "read_committed",
        })
        self.ends: dict[tuple[str, int], int] = {}
        for event_type in EVENT_TYPES:
            topic = settings.topics.source(event_type)
            metadata = self._consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"source topic {topic} is not readable: {metadata.error}")
            for partition in metadata.partitions:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                self.ends[(topic, partition)] = high

    def remaining(self) -> int:
        """Events between the job's committed offsets and the ends (0: consumed up to the end)."""
        from confluent_kafka import TopicPartition

        wanted = [TopicPartition(t, p) for (t, p), end in self.ends.items() if end > 0]
        committed = self._consumer.committed(wanted, timeout=30) if wanted else []
        return sum(max(self.ends[(tp.topic, tp.partition)] - max(tp.offset, 0), 0) for tp in committed)

    def close(self) -> None:
        self._consumer.close()


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
    savepoint's path. (`cli.run_pipeline` does the same step by step, between loader batches.)"""
    job = result.get_job_client()
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


def table_environment(settings: Settings, restore: bool = True):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    checkpoint_dir = settings.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    config.set("pipeline.name", f"viewcount-rollups ({settings.topics.prefix})")
    config.set("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in (settings.connector_jar, settings.udf_jar)))
    config.set("parallelism.default", str(settings.parallelism))
    config.set("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
    config.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    config.set("execution.checkpointing.dir", checkpoint_dir.resolve().as_uri())
    config.set("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set("execution.checkpointing.num-retained", "2")
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


def build(t_env, settings: Settings, bounded: bool, blackhole: bool = False):
    """Register sources, views and sinks; return the statement set of the job's outputs
    (blackhole: every sink discards its rows, to measure the job without them)."""
    register_functions(t_env)
    decoded = {}
    for event_type in EVENT_TYPES:
        source = f"source_{event_type}"
        t_env.execute_sql(source_ddl(settings, source, settings.topics.source(event_type), bounded))
        decoded[event_type] = f"decoded_{event_type}"
        t_env.execute_sql(f"CREATE TEMPORARY VIEW {q(decoded[event_type])} AS {decode_sql(event_type, source)}")
    counted = {t: decoded[t] for t in COUNTED_TYPES}
    t_env.execute_sql(f"CREATE TEMPORARY VIEW valid_events AS {valid_events_sql(counted)}")

    sinks = {  # table: (topic, columns)
        "dead_letter": (settings.topics.dead_letter,
            f"reason STRING, {q('topic')} STRING, {q('partition')} INT, {q('offset')} BIGINT, payload STRING"),
        "events_valid": (settings.topics.events_valid,
            "event_type STRING, event_id STRING, event_time_ms BIGINT, post_id BIGINT, author_id BIGINT, "
            "viewer_id BIGINT, surface STRING, client STRING, action STRING"),
        "post_minute": (settings.topics.post_minute,
            f"post_id BIGINT, window_start TIMESTAMP(3), {q('views')} BIGINT, impressions BIGINT, "
            "deliveries BIGINT, viewer_ids ARRAY<BIGINT>"),
        "post_surface_minute": (settings.topics.post_surface_minute,
            f"post_id BIGINT, window_start TIMESTAMP(3), surface STRING, action STRING, {q('views')} BIGINT, "
            "impressions BIGINT"),
        "posts_valid": (settings.topics.posts_valid,
            "post_id BIGINT, author_id BIGINT, created_ms BIGINT, reply_to BIGINT, quote_of BIGINT, "
            "links STRING, tags STRING"),
        "presence_valid": (settings.topics.presence_valid,
            "event_id STRING, event_time_ms BIGINT, space_id BIGINT, listener_id BIGINT, action STRING"),
    }
    for table, (topic, columns) in sinks.items():
        t_env.execute_sql(kafka_sink_ddl(settings, table, topic, columns, blackhole))
    statements = t_env.create_statement_set()
    statements.add_insert_sql(f"INSERT INTO dead_letter {dead_letter_sql(decoded.values())}")
    statements.add_insert_sql(
        f"INSERT INTO events_valid SELECT {', '.join(q(c) for c in VALID_EVENT_COLUMNS)} FROM valid_events"
    )
    statements.add_insert_sql(f"INSERT INTO post_minute {post_minute_sql('valid_events')}")
    statements.add_insert_sql(f"INSERT INTO post_surface_minute {post_surface_minute_sql('valid_events')}")
    # Posts pass straight through (no window): attribution to a subject happens where the
    # whole reply/quote tree is known, so a post arriving after its views is still counted.
    statements.add_insert_sql(
        "INSERT INTO posts_valid SELECT post_id, author_id, event_time_ms, reply_to, quote_of, links, tags "
        f"FROM {q(decoded['post'])} WHERE reject_reason IS NULL"
    )
    statements.add_insert_sql(
        "INSERT INTO presence_valid SELECT event_id, event_time_ms, space_id, listener_id, action "
        f"FROM {q(decoded['presence'])} WHERE reject_reason IS NULL"
    )
    return statements


def submit(settings: Settings, bounded: bool, blackhole: bool = False):
    """Start the job on the local mini-cluster (or the configured cluster); returns its TableResult."""
    t_env = table_environment(settings)
    # Window starts are UTC: the session time zone decides how TIMESTAMP_LTZ windows are cut.
    t_env.get_config().set("table.local-time-zone", "UTC")
    return build(t_env, settings, bounded, blackhole).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the viewcount rollup job (Flink SQL on PyFlink).")
    parser.add_argument("--bounded", action="store_true",
                        help="read the topics up to their current end, close every window, then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
