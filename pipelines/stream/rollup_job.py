"""The streaming job: decode + validate, exact dedupe, 1-minute event-time windows, rollups.

Everything runs as Flink SQL on the JVM (no per-row Python): each source record is decoded once,
by our `viewcount-event` format (`job_tables`); duplicates collapse inside the window, and each
post-minute row carries its viewers' DataSketches HLL sketch (`job_sql`).

Outputs go to Kafka at least once, as they are made (not at checkpoints): dead letters, validated
events for the archive, post-minute and post-surface-minute rollups, and the validated post
creations and Space presence events; their tables collapse a replayed row (docs/design.md,
"Effectively once"). One small output is transactional, committed with each checkpoint: the minutes
whose windows have closed, where a restarted job's watermark starts (`restore_points`).
ClickHouse's Kafka engine loads the archive and the rollups itself (`pipelines.stream.streams`);
`pipelines.stream.loader` upserts the rest.

This module writes the job as SQL (`job_statements`), builds it (`build`) and submits it from a
kept compiled plan (`submit`, `main`; `pipelines.stream.job_plans`). Kept apart:
the transformation (`pipelines.stream.job_sql`: `decode_sql`, `post_minute_sql`, ..., testable on
in-memory rows), the Kafka tables (`job_tables`), the table environment and its Java functions
(`job_environment`), where a restarted job resumes (`restore_points`), the end of a bounded run
(`bounded_run`) and the running of the job beside the loader (`pipelines.stream.runner`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable

from pipelines.config import EVENT_TYPES, Settings
from pipelines.store.tables import (
    DEAD_LETTER,
    EVENTS_VALID,
    OUTPUTS,
    POST_MINUTE_ROWS,
    POST_SURFACE_MINUTE_ROWS,
    POSTS_VALID,
    PRESENCE_VALID,
    Output,
)
from pipelines.stream import job_plans, restore_points
from pipelines.stream.bounded_run import EndOfInput, run_to_end
from pipelines.stream.job_environment import register_functions, table_environment
from pipelines.stream.job_sql import (
    COUNTED_TYPES,
    archive_sql,
    dead_letter_sql,
    decode_sql,
    keyed_sql,
    post_minute_sql,
    post_surface_minute_sql,
    post_windows_sql,
    quoted,
    valid_events_sql,
    windowed_events_sql,
)
from pipelines.stream.job_tables import WATERMARK_FLOOR, kafka_sink_ddl, source_ddl, watermark_floor_ddl

log = logging.getLogger("viewcount.rollup_job")


def job_statements(settings: Settings, bounded: bool, blackhole: bool = False, watermark_floor: int | None = None,
                   outputs: Iterable[Output] = OUTPUTS, exactly_once: bool = False,
                   floors: bool = True) -> tuple[list[str], list[str]]:
    """The job as SQL: the statements that register its sources, views and sinks, and its INSERTs
    (blackhole: every sink discards its rows, to measure the job without them; watermark_floor:
    `watermark_floor_ms`). `outputs`, `exactly_once` (every output transactional, as before
    issue 18) and `floors` (the watermark floor of each checkpoint) let a benchmark build the job
    of each rung (bench.ceiling)."""
    ddl: list[str] = []
    decoded = {}
    for event_type in EVENT_TYPES:
        source = f"source_{event_type}"
        ddl.append(source_ddl(settings, source, event_type, bounded, watermark_floor))
        decoded[event_type] = f"decoded_{event_type}"
        ddl.append(f"CREATE TEMPORARY VIEW {quoted(decoded[event_type])} AS {decode_sql(event_type, source, settings)}")
    counted = {t: decoded[t] for t in COUNTED_TYPES}
    ddl.append(f"CREATE TEMPORARY VIEW valid_events AS {valid_events_sql(counted)}")
    windowed = windowed_events_sql("valid_events", watermark_floor)
    ddl.append(f"CREATE TEMPORARY VIEW windowed_events AS {windowed}")
    # One aggregation for both rollups (post_windows), and one view of the post-minute rows for their
    # sink and the watermark floor's: the planner builds the windows once for all three.
    ddl.append(f"CREATE TEMPORARY VIEW post_windows AS {post_windows_sql('windowed_events')}")
    ddl.append(f"CREATE TEMPORARY VIEW post_minute_rows AS {post_minute_sql('post_windows')}")
    # Posts pass straight through (no window): attribution to a subject happens where the
    # whole reply/quote tree is known, so a post arriving after its views is still counted.
    selects = {
        DEAD_LETTER: dead_letter_sql(decoded.values()),
        EVENTS_VALID: archive_sql("valid_events", watermark_floor),
        POST_MINUTE_ROWS: "SELECT * FROM post_minute_rows",
        POST_SURFACE_MINUTE_ROWS: post_surface_minute_sql("post_windows"),
        POSTS_VALID: f"SELECT post_id, author_id, event_time_ms, reply_to, quote_of, links, tags "
                     f"FROM {quoted(decoded['post'])} WHERE reject_reason IS NULL",
        PRESENCE_VALID: f"SELECT event_id, event_time_ms, space_id, listener_id, action "
                        f"FROM {quoted(decoded['presence'])} WHERE reject_reason IS NULL",
    }
    inserts = []
    for output in OUTPUTS:
        if output in outputs:
            ddl.append(kafka_sink_ddl(settings, output, blackhole, exactly_once))
            inserts.append(f"INSERT INTO {output.name} {keyed_sql(output.name, selects[output])}")
    if floors and POST_MINUTE_ROWS in outputs:
        # Behind the windows' rows, it holds their watermark and writes it with every checkpoint:
        # where a job restored from that checkpoint starts its own (restore_points.watermark_floor_ms).
        ddl.append(watermark_floor_ddl(settings))
        inserts.append(f"INSERT INTO {WATERMARK_FLOOR} SELECT * FROM post_minute_rows")
    return ddl, inserts


def statement_set(t_env, ddl: list[str], inserts: list[str]):
    """The job's functions and `ddl` registered in t_env; the statement set of `inserts`."""
    register_functions(t_env)
    for statement in ddl:
        t_env.execute_sql(statement)
    statements = t_env.create_statement_set()
    for insert in inserts:
        statements.add_insert_sql(insert)
    return statements


def build(t_env, settings: Settings, bounded: bool, **options):
    """Register the job (`job_statements`, its options) in t_env; return its statement set."""
    return statement_set(t_env, *job_statements(settings, bounded, **options))


def submit(settings: Settings, bounded: bool, blackhole: bool = False, watermark_floor: int | None = None):
    """Start the job on the local mini-cluster (or the configured cluster); returns its TableResult.
    A restore point of another version's job (`restore_points.set_aside_foreign`) is set aside
    when it is a drained run's savepoint, else refused with what to do."""
    options = {"blackhole": blackhole, "watermark_floor": watermark_floor}
    try:
        return job_plans.compiled(table_environment(settings), settings, bounded, options).execute()
    except Exception as exc:
        if not restore_points.set_aside_foreign(settings.checkpoint_dir, str(exc)):
            raise
    return job_plans.compiled(table_environment(settings), settings, bounded, options).execute()


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
