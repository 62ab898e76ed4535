"""The job's Kafka tables: sources of decoded events with their watermark, and the outputs' sinks.

Each source record is decoded once, by our `viewcount-event` format (jvm/: typed columns, the
reject reason and the payload in one pass over its bytes, with rules generated from
schemas/*.json); an event time implausible against the record's Kafka time is a reject too, and
never moves the watermark. Outputs go to Kafka at least once; beside them, the watermark floor of
each checkpoint goes to a file (`watermark_floor_ddl`).
"""

from __future__ import annotations

import json

from pipelines.config import Settings
from pipelines.ingest import schemas
from pipelines.store.tables import POST_MINUTE_ROWS, Output
from pipelines.stream.job_sql import CHANGE_KEY, CHANGE_KEYS, _literal, quoted, source_columns, watermark_sql
from pipelines.stream.restore_points import floors_dir

EVENT_FORMAT = "viewcount-event"  # jvm/: dev.viewcount.flink.EventFormatFactory
WATERMARK_FLOOR = "watermark_floor"  # jvm/: dev.viewcount.flink.WatermarkFloorSink


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


def kafka_sink_ddl(settings: Settings, output: Output, blackhole: bool = False, exactly_once: bool = False) -> str:
    """The sink of one output: at least once (the job's), or transactional, committed with the
    checkpoints (the job's before issue 18, kept for bench.ceiling's ladder, as is `blackhole`)."""
    columns = _columns(output)
    keyed = output.name in CHANGE_KEYS
    if keyed:
        columns += f", {CHANGE_KEY} STRING"
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
        **_wire_format(output),
        # The change key (job_sql.CHANGE_KEYS) is the record's Kafka key, not in its value.
        **({"key.format": "raw", "key.fields": CHANGE_KEY, "value.fields-include": "EXCEPT_KEY"} if keyed else {}),
        **guarantee,
        "properties.max.request.size": "67108864",
        "properties.compression.type": "lz4",
        # Batch records: one send per record costs more than the decode (measured: 29 s -> 22 s
        # per million validated events on this 2-core box).
        "properties.linger.ms": "50",
        "properties.batch.size": "1048576",
    }
    return f"CREATE TABLE {quoted(output.name)} ({columns}) WITH ({_options(options)})"


ROW_BINARY = "clickhouse-rowbinary"  # jvm/: dev.viewcount.flink.RowBinaryFormatFactory


def _wire_format(output: Output) -> dict[str, str]:
    """The sink's format options for the output's wire (Output.wire): JSON, or ClickHouse's RowBinary
    in the ClickHouse types its Kafka table declares (pipelines.stream.streams), byte for byte."""
    if output.wire == "RowBinary":
        return {"format": ROW_BINARY, f"{ROW_BINARY}.types": ",".join(f.clickhouse for f in output.fields)}
    if output.wire == "JSONEachRow":
        return {"format": "json"}
    raise ValueError(f"{output.name}: no sink format for the wire {output.wire!r}")


def watermark_floor_ddl(settings: Settings) -> str:
    """The sink that writes, with every checkpoint, where a job restored from it starts its watermark
    (jvm/: dev.viewcount.flink.WatermarkFloorSink; read by restore_points.watermark_floor_ms), fed
    the post-minute rows."""
    options = {"connector": "viewcount-watermark-floor", "path": floors_dir(settings.checkpoint_dir).resolve().as_uri()}
    # Every column of the rows it follows: fed fewer, the planner would cut its windows a second time.
    return f"CREATE TABLE {WATERMARK_FLOOR} ({_columns(POST_MINUTE_ROWS)}) WITH ({_options(options)})"


def _columns(output: Output) -> str:
    """An output's columns as a Flink table declares them."""
    return ", ".join(f"{quoted(f.name)} {f.flink}" for f in output.fields)


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{_literal(k)} = {_literal(v)}" for k, v in options.items())
