"""`viewcount`: the commands a data engineer runs; the only module that wires the pieces together."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from pathlib import Path

from pipelines.config import Settings

log = logging.getLogger("viewcount")


def _connect(settings: Settings):
    from pipelines.store.clickhouse import connect

    return connect(settings)


def cmd_stack(args, settings: Settings) -> int:
    from pipelines import stack

    action = {"up": stack.up, "down": stack.down, "status": stack.status}[args.command]
    for line in action(settings):
        print(line)
    return 0


def cmd_migrate(args, settings: Settings) -> int:
    from pipelines.store import shapes
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations

    applied = apply_migrations(connect(settings, database="default"), database=settings.clickhouse.database,
                               shape=shapes.configured(settings))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ", none pending"))
    return 0


def cmd_generate(args, settings: Settings) -> int:
    from pipelines.reference.generator import generate_night

    truth = generate_night(
        settings, scale=args.scale, seed=args.seed, rate=args.rate,
        truth_path=Path(args.truth) if args.truth else None,
        via=args.via, via_key=args.key or os.environ.get("VIEWCOUNT_COLLECTOR_KEY", ""),
    )
    print(f"produced {truth.deliveries:,} records ({truth.duplicate_deliveries:,} duplicate deliveries) "
          f"at 1:{args.scale}" + (f"; ground truth in {args.truth}" if args.truth else ""))
    return 0


def cmd_run(args, settings: Settings) -> int:
    from dataclasses import replace

    from pipelines.stream.runner import run_pipeline

    if args.cluster:
        settings = replace(settings, flink_cluster=args.cluster)
    if args.parallelism:
        settings = replace(settings, parallelism=args.parallelism)
    report = run_pipeline(settings, bounded=args.bounded)
    what = f"{report.source_records:,} source records" if args.bounded else "the live stream"
    print(f"ran {what} in {report.seconds:,.1f} s; {report.dead_letters:,} records rejected to the dead-letter "
          f"topic; figures in {settings.clickhouse.describe()}")
    return 0


def cmd_serve(args, settings: Settings) -> int:
    from pipelines.serve.api import serve

    print(f"dashboards API and live page on http://{args.host}:{args.port}/ (OpenAPI: /docs); Ctrl-C to stop")
    serve(settings, host=args.host, port=args.port, ttl_s=args.ttl)
    return 0


def cmd_query_post(args, settings: Settings) -> int:
    from pipelines.serve import query

    figures = query.post_figures(_connect(settings), args.post_id)
    counts = " · ".join(f"{count:,} {name}" for name, count in figures.counts.items())
    print(f"post {figures.post_id}: {counts} · {figures.unique_viewers:,.0f} unique viewers "
          f"({figures.unique_viewers_lower:,.0f} – {figures.unique_viewers_upper:,.0f})")
    return 0


def cmd_query_subject(args, settings: Settings) -> int:
    from pipelines.rollups.subjects import get_subject
    from pipelines.serve import query
    from pipelines.serve.figures_from_posts import subject_figures

    subject = get_subject(args.subject_id)
    zone = args.tz or subject.time_zone
    if args.start or args.end:
        if not (args.start and args.end):
            raise query.QueryError("give both --from and --to (or neither, for the whole of the data)")
        start, end = query.parse_range(args.start, args.end, zone)
    else:
        start, end = query.ALL_TIME
    # Computed from the posts and their minute rows (exact even for hours rebuilt a moment ago);
    # dashboards read the same figures from the subject rollups (viewcount serve).
    figures = subject_figures(_connect(settings), subject, start, end, with_minutes=args.minutes)
    print(f"{subject.name}, {_local(start, zone)} to {_local(end, zone)} ({zone}):")
    print(query.headline(figures))
    if args.minutes:
        print(figures.minutes.to_string(index=False))
    return 0


def _local(moment, zone: str) -> str:
    from zoneinfo import ZoneInfo

    from pipelines.serve.query import ALL_TIME

    return "the start" if moment == ALL_TIME[0] else "the end" if moment == ALL_TIME[1] else (
        moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M"))


def cmd_erase(args, settings: Settings) -> int:
    """Erase viewers from every table and every sketch; the ids are printed nowhere."""
    from pipelines.repair import erasure
    from pipelines.store import shapes

    report = erasure.erase(_connect(settings), args.viewer, requested_by=args.requested_by,
                           shape=shapes.configured(settings))
    rows = ", ".join(f"{table} {n:,}" for table, n in report.rows.items())
    print(f"erased {report.viewers} viewer(s) (request {report.request_id}): rows deleted: {rows}; "
          f"{len(report.hours)} hour(s) rebuilt; {report.seconds:.1f} s "
          f"({report.mutation_seconds:.1f} s waiting for mutations, {report.repair_seconds:.1f} s rebuilding)")
    return 0


def cmd_dagster(args, settings: Settings) -> int:
    """The Dagster UI (webserver + daemon for the schedule) on loopback, against these settings."""
    import os
    import shutil

    home = settings.state_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home.resolve()),
           "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url, "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    print(f"Dagster UI on http://127.0.0.1:{args.port} (Ctrl-C to stop); state in {home}")
    os.execvpe(dagster, [dagster, "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1",
                         "-p", str(args.port)], env)


def cmd_demo(args, settings: Settings) -> int:
    from pipelines.reference.generator import SUBJECT_POST_ID, generate_night
    from pipelines.serve import query
    from pipelines.serve.figures_from_rollups import subject_rollup_figures

    cmd_migrate(args, settings)
    started = time.monotonic()
    truth = generate_night(settings, scale=args.scale, seed=args.seed)
    produced = time.monotonic()
    print(f"generated the night at 1:{args.scale}: {truth.deliveries:,} records into Kafka "
          f"in {produced - started:.1f} s")
    from pipelines.stream.runner import run_pipeline

    stats = run_pipeline(settings, bounded=True)
    elapsed = time.monotonic() - produced
    client = _connect(settings)
    from pipelines.repair.backfill import hours_with_events, rebuild_hour
    from pipelines.store import shapes

    # The night is over: rebuild its hours from the archive, as the hourly backfill would,
    # so events that came later than the stream's watermark are counted too.
    shape = shapes.configured(settings)
    rebuilt = [rebuild_hour(client, hour, shape=shape) for hour in hours_with_events(client)]
    # The subject rollups of the rebuilt hours follow (REPLACE PARTITION bypasses the change log
    # the refresh reads), as the hourly Dagster job does.
    from pipelines.repair import subject_repair
    from pipelines.rollups.subjects import load_subjects

    for tracked in load_subjects().values():
        for report in rebuilt:
            subject_repair.rebuild_hour(client, tracked, report.hour_start)
    subject = query.post_figures(client, SUBJECT_POST_ID)
    totals = query.all_posts_totals(client)
    print()
    print(f"From ClickHouse ({settings.clickhouse.describe()}):")
    counts = ", ".join(f"{count:,} {name}" for name, count in subject.counts.items())
    print(f"  the Space's post: {counts}, {subject.unique_viewers:,.0f} unique viewers "
          f"(95 % bounds {subject.unique_viewers_lower:,.0f} – {subject.unique_viewers_upper:,.0f})")
    print(f"  all posts: {totals['views']:,} views, {totals['impressions']:,} impressions "
          f"across {totals['posts']:,} posts")
    print(f"  rejected to the dead-letter topic: {stats.dead_letters:,}")
    print(f"  hours rebuilt from the archive after the stream: {len(rebuilt)} "
          f"({sum(r.seconds for r in rebuilt):.1f} s)")
    for tracked in load_subjects().values():
        start, end = query.parse_range("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")
        figures = subject_rollup_figures(client, tracked, start, end)
        print(f"  {tracked.name}, 7:47 PM to 10:47 PM ET: {query.headline(figures)}")
    print(f"  pipeline: {truth.deliveries:,} records in {elapsed:.1f} s = "
          f"{truth.deliveries / elapsed:,.0f} events/s (Flink job start-up included)")
    target = settings.clickhouse
    print()
    print("Next:")
    analyst = settings.clickhouse_as("analyst").user
    print(f"  . {settings.credentials_file}    # the generated passwords, if this is the local stack")
    print(f"  clickhouse-client --port {target.port} --user {analyst} "
          '--password "$VIEWCOUNT_CLICKHOUSE_ANALYST_PASSWORD" '
          f"--database {target.analysis_database} --query 'SELECT * FROM post_minute FINAL LIMIT 5'")
    print(f"  viewcount query post {SUBJECT_POST_ID}")
    print('  viewcount query subject space-2024-08-12 --from "2024-08-12 19:47" --to "2024-08-12 22:47" --minutes')
    print("  make serve    # the live page: http://127.0.0.1:8000/ (API docs: http://127.0.0.1:8000/docs)")
    print("  make down    # stop Kafka and ClickHouse")
    return 0


def _viewer_id(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a viewer id (a positive integer)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewcount", description="View and impression metrics pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start Kafka and ClickHouse"), ("down", "stop them"), ("status", "show them")):
        sub.add_parser(name, help=text).set_defaults(func=cmd_stack)
    sub.add_parser("migrate", help="apply pending ClickHouse migrations").set_defaults(func=cmd_migrate)

    generate = sub.add_parser("generate", help="produce the reference night into Kafka")
    generate.add_argument("--scale", type=int, default=1000, help="1:N of the published figures (default 1000)")
    generate.add_argument("--seed", type=int, default=20240812)
    generate.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as possible)")
    generate.add_argument("--truth", help="write the ground-truth JSON here")
    generate.add_argument("--via", metavar="URL", help="send through the HTTP collector at URL (docs/collector.md)")
    generate.add_argument("--key", help="the collector write key (default: VIEWCOUNT_COLLECTOR_KEY)")
    generate.set_defaults(func=cmd_generate)

    from pipelines.ingest import collector

    collect = sub.add_parser("collect", help="the HTTP collector: clients' event batches into Kafka")
    collect.set_defaults(func=collector.run)
    collector.add_arguments(collect)

    run = sub.add_parser("run", help="run the Flink job and the ClickHouse loader")
    run.add_argument("--bounded", action="store_true", help="stop once everything in Kafka now is loaded")
    run.add_argument("--cluster", metavar="HOST:PORT",
                     help="submit the job to a Flink session cluster's REST address (make cluster-up: "
                          "127.0.0.1:29081) instead of the local mini-cluster (env VIEWCOUNT_FLINK_CLUSTER)")
    run.add_argument("--parallelism", type=int, help="the job's parallelism (env VIEWCOUNT_PARALLELISM)")
    run.set_defaults(func=cmd_run)

    query = sub.add_parser("query", help="figures from ClickHouse")
    query_sub = query.add_subparsers(dest="what", required=True)
    post = query_sub.add_parser("post", help="views, impressions and unique viewers of one post")
    post.add_argument("post_id", type=int)
    post.set_defaults(func=cmd_query_post)
    subject = query_sub.add_parser("subject", help="the published figures of a tracked subject")
    subject.add_argument("subject_id", help="an id from config/subjects.toml")
    subject.add_argument("--from", dest="start", help="local start, e.g. '2024-08-12 19:47'")
    subject.add_argument("--to", dest="end", help="local end (exclusive)")
    subject.add_argument("--tz", help="time zone of --from/--to and of the output (default: the subject's)")
    subject.add_argument("--minutes", action="store_true", help="also print the per-minute rows")
    subject.set_defaults(func=cmd_query_subject)

    serve = sub.add_parser("serve", help="the read-only dashboards API and live page, on loopback")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ttl", type=float, default=2.0, help="seconds identical requests share one answer")
    serve.set_defaults(func=cmd_serve)

    erase = sub.add_parser("erase", help="erase viewers: their rows from every table, them from every sketch "
                           "(docs/access.md, Erasure)")
    erase.add_argument("--viewer", type=_viewer_id, nargs="+", required=True, metavar="ID",
                       help="viewer (or listener) ids")
    erase.add_argument("--requested-by", default=getpass.getuser(),
                       help="who asked, recorded with the request (a ticket or a name; default: your user name)")
    erase.set_defaults(func=cmd_erase)

    dagster = sub.add_parser("dagster", help="the Dagster UI for backfills and reconciliation, on loopback")
    dagster.add_argument("--port", type=int, default=3000)
    dagster.set_defaults(func=cmd_dagster)

    demo = sub.add_parser("demo", help="generate the night, run the pipeline, print the figures")
    demo.add_argument("--scale", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=20240812)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The level goes on our own loggers (viewcount.*), not only on the root: opening a local
    # Flink mini-cluster imports PyFlink's Beam worker pool, which sets the root logger to
    # WARNING (pyflink/fn_execution/beam/beam_worker_pool_service.py) after this basicConfig,
    # and every INFO line of ours would vanish with it. The root's handler still prints them.
    logging.getLogger("viewcount").setLevel(level)
    for noisy in ("apache_beam", "py4j", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The driver logs every failed connection with its traceback; while ClickHouse is away our own
    # lines say what waits and when it is back (pipelines.stream.runner, pipelines.stream.loader).
    logging.getLogger("clickhouse_driver.connection").setLevel(logging.ERROR)
    settings = Settings.from_env()
    try:
        return args.func(args, settings)
    except Exception as exc:  # a message the user can act on, not a traceback
        from pipelines.repair.erasure import ErasureTimeout
        from pipelines.rollups.subjects import UnknownSubject
        from pipelines.serve.query import QueryError
        from pipelines.stack.services import StackError
        from pipelines.store.clickhouse import ClickHouseUnavailable

        if isinstance(exc, (ClickHouseUnavailable, StackError, FileNotFoundError, QueryError, UnknownSubject,
                            ErasureTimeout)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
