"""The engine's ceiling for our core work, and the ladder from it to our job, one feature at a time.

    .venv/bin/python -m bench.ceiling --rung N      (a child of bench.cpu, which measures its CPU)

Rung 0 is the minimal Flink SQL job (PyFlink mini-cluster, parallelism 1): the views topic read
with Flink's built-in `json` format, a 1-minute TUMBLE per post with COUNT(*), COUNT(DISTINCT
event_id) and ARRAY_AGG(DISTINCT viewer_id), into a blackhole sink. Each later rung adds one of our
job's features to the one before, built from the job's own functions (pipelines.stream.rollup_job
and the job_sql, job_tables and job_environment it builds from), so the top rungs are our job
without (then with) its Kafka sinks. Every rung runs in the job's table environment (object
reuse, checkpoints every 2 s, exactly-once checkpoints) and commits its offsets to the job's
consumer group on each checkpoint: that is how bench.cpu sees its progress.
A rung is run bounded the way the job is: read to the topics' ends at start, then drained.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace

from pipelines.config import EVENT_TYPES, Settings
from pipelines.store.tables import (
    DEAD_LETTER,
    EVENTS_VALID,
    POST_MINUTE_ROWS,
    POST_SURFACE_MINUTE_ROWS,
    POSTS_VALID,
    PRESENCE_VALID,
)
from pipelines.stream import bounded_run, job_environment, job_sql, job_tables, rollup_job
from pipelines.stream.job_sql import WINDOW, quoted
from pipelines.stream.job_tables import _options

log = logging.getLogger("viewcount.bench.ceiling")


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: what it adds, and how the job is built at this step."""

    name: str
    adds: str
    event_types: tuple[str, ...]  # the source topics it reads (its records are the denominator)
    outputs: tuple = ()  # rollup_job outputs written (rung 2 on)
    ceiling_aggregate: bool = True  # the ceiling's one aggregation, into a blackhole
    kafka_sinks: bool = False
    exactly_once: bool = False
    checkpoint_interval_ms: int = 2000  # the job's until issue 18, so that the rungs measured then still compare
    floors: bool = False  # the watermark floor of each checkpoint (the job's since issue 18)


_TEXT = (POSTS_VALID, PRESENCE_VALID)
RUNGS = (
    Rung("ceiling", "built-in json format, views only, one aggregation, blackhole", ("view",)),
    Rung("format", "our viewcount-event format, validation, plausible time (reads the kafka_time metadata)",
         ("view",)),
    Rung("all topics", "impressions counted too; posts and presence decoded and passed through (blackhole)",
         EVENT_TYPES, _TEXT),
    Rung("sketches", "our aggregation (post_window: exact counts per post and per surface, HLL sketch, version) "
         "in place of the ceiling's; post_minute out", EVENT_TYPES, (POST_MINUTE_ROWS, *_TEXT),
         ceiling_aggregate=False),
    Rung("post_surface_minute", "the same windows' surfaces out, unnested (a second aggregation until issue 18's "
         "cut 3)", EVENT_TYPES,
         (POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False),
    Rung("dead letters", "the dead-letter output (reads topic/partition/offset metadata and the payload)",
         EVENT_TYPES, (DEAD_LETTER, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False),
    Rung("archive", "events_valid (every valid event) out: all six outputs, blackhole sinks", EVENT_TYPES,
         (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False),
    Rung("kafka at-least-once", "the six outputs written to Kafka, at least once", EVENT_TYPES,
         (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False,
         kafka_sinks=True),
    Rung("kafka exactly-once", "transactional sinks: the job as it runs (without ClickHouse and the loader)",
         EVENT_TYPES, (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT),
         ceiling_aggregate=False, kafka_sinks=True, exactly_once=True),
    Rung("checkpoints 30 s", "the job with checkpoints every 30 s instead of 2 s", EVENT_TYPES,
         (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False,
         kafka_sinks=True, exactly_once=True, checkpoint_interval_ms=30_000),
    Rung("at least once, 10 s", "the job as it runs since issue 18: at-least-once sinks, the watermark "
         "floor of each checkpoint, checkpoints every 10 s (without ClickHouse and the loader)", EVENT_TYPES,
         (DEAD_LETTER, EVENTS_VALID, POST_MINUTE_ROWS, POST_SURFACE_MINUTE_ROWS, *_TEXT), ceiling_aggregate=False,
         kafka_sinks=True, checkpoint_interval_ms=10_000, floors=True),
)
CEILING_SINK = "ceiling_post_minute"


def ceiling_source_ddl(settings: Settings, table: str) -> str:
    """The views topic with Flink's built-in json format: only the fields the aggregation reads."""
    options = {
        "connector": "kafka",
        "topic": settings.topics.source("view"),
        "properties.bootstrap.servers": settings.kafka_bootstrap,
        "properties.group.id": job_tables.job_group_id(settings),
        "scan.startup.mode": "group-offsets",
        "properties.auto.offset.reset": "earliest",
        "format": "json",
        "json.ignore-parse-errors": "true",  # a malformed record must not stop the measurement
    }
    return f"""
CREATE TABLE {quoted(table)} (
  event_id STRING, event_time BIGINT, post_id BIGINT, viewer_id BIGINT,
  ts AS TO_TIMESTAMP_LTZ(event_time, 3),
  WATERMARK FOR ts AS ts - INTERVAL '{int(settings.watermark_delay_s)}' SECOND
) WITH ({_options(options)})"""


def ceiling_aggregate_sql(view: str, time_column: str) -> str:
    return f"""
SELECT post_id, window_start, COUNT(*) AS deliveries, COUNT(DISTINCT event_id) AS {quoted('views')},
  ARRAY_AGG(DISTINCT viewer_id) AS viewers
FROM TABLE(TUMBLE(TABLE {quoted(view)}, DESCRIPTOR({quoted(time_column)}), {WINDOW}))
GROUP BY post_id, window_start, window_end"""


CEILING_SINK_DDL = (f"CREATE TABLE {CEILING_SINK} (post_id BIGINT, window_start TIMESTAMP(3), deliveries BIGINT, "
                    f"{quoted('views')} BIGINT, viewers ARRAY<BIGINT>) WITH ('connector' = 'blackhole')")


def build(t_env, settings: Settings, rung: Rung):
    """The statement set of one rung."""
    if rung.name == "ceiling":
        t_env.execute_sql(ceiling_source_ddl(settings, "views"))
        # A malformed record (its fields null) would have no time, and a window cannot take it.
        t_env.execute_sql(f"CREATE TEMPORARY VIEW timed_views AS SELECT * FROM {quoted('views')} WHERE ts IS NOT NULL")
        aggregated_view, time_column = "timed_views", "ts"
        statements = t_env.create_statement_set()
    elif rung.event_types == ("view",):
        job_environment.register_functions(t_env)
        t_env.execute_sql(job_tables.source_ddl(settings, "source_view", "view", bounded=True))
        t_env.execute_sql(f"CREATE TEMPORARY VIEW decoded_view AS "
                          f"{job_sql.decode_sql('view', 'source_view', settings)}")
        t_env.execute_sql(f"CREATE TEMPORARY VIEW valid_events AS "
                          f"{job_sql.valid_events_sql({'view': 'decoded_view'})}")
        aggregated_view, time_column = "valid_events", "event_time"
        statements = t_env.create_statement_set()
    else:
        statements = rollup_job.build(t_env, settings, bounded=True, blackhole=not rung.kafka_sinks,
                                      outputs=rung.outputs, exactly_once=rung.exactly_once,
                                      floors=rung.floors)
        aggregated_view, time_column = "valid_events", "event_time"
    if rung.ceiling_aggregate:
        t_env.execute_sql(CEILING_SINK_DDL)
        statements.add_insert_sql(f"INSERT INTO {CEILING_SINK} {ceiling_aggregate_sql(aggregated_view, time_column)}")
    return statements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rung of the CPU ladder, run bounded (bench.cpu measures it).")
    parser.add_argument("--rung", type=int, default=0, choices=range(len(RUNGS)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    rung = RUNGS[args.rung]
    settings = Settings.from_env()
    settings = replace(settings, checkpoint_interval_ms=rung.checkpoint_interval_ms)
    end = bounded_run.EndOfInput(settings, rung.event_types)
    t_env = job_environment.table_environment(settings, restore=False)
    result = build(t_env, settings, rung).execute()
    log.info("rung %d (%s) submitted: %s", args.rung, rung.name, result.get_job_client().get_job_id())
    try:
        bounded_run.run_to_end(result, settings, end)
    finally:
        end.close()
    print(json.dumps({"rung": args.rung, "name": rung.name, "records": sum(end.ends.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
