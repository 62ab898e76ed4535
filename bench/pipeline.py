"""Benchmark: the pipeline end to end, each stage alone, two peers, and the headline query.

    .venv/bin/python -m bench.pipeline [--scale 1000] [--runs 3]      (make bench)

Every figure is measured in this one run on this machine, min / median / max over --runs,
and reported as ratios to its neighbours: ours to Kafka's own consume limit, each peer to ours.
Writes bench/results/pipeline.{md,json,png}. Needs the local stack (make up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import Settings, Topics
from pipelines.stack.services import stop_group
from pipelines.store.migrate import drop_database

RESULTS = Path(__file__).parent / "results"
PERF_RECORDS = 500_000
PERF_RECORD_BYTES = 200  # about the size of a view event as JSON
START_LOAD, START_S = 5_000, 60.0  # views/s and seconds offered while the live job starts
CH_PEER_WAIT_S = 300  # the peer's deadline to load every view record


def live_view(n: int, now_ms: int) -> tuple[bytes, bytes]:
    """The n-th view of the live runs' synthetic load (500 posts, 200,000 viewers, one surface),
    dated now: its record and its key (the post)."""
    import orjson

    post = n % 500 + 1
    return orjson.dumps({"event_id": f"live-{n}", "event_time": now_ms, "post_id": post, "author_id": 1,
                         "viewer_id": n % 200_000 + 1, "surface": "home", "client": "web"}), str(post).encode()


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def isolated(settings: Settings, tag: str) -> Settings:
    """Settings with a topic prefix and a database of their own."""
    t = settings.clickhouse
    return replace(settings, topics=Topics(prefix=f"bench{tag}"),
                   clickhouse_url=t.url(f"bench_{tag}"))


def prepare(settings: Settings) -> None:
    from pipelines.stack.clickhouse_server import allow_readers
    from pipelines.stack.kafka_broker import create_topics
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations

    create_topics(settings)
    apply_migrations(connect(settings, database="default"), settings.clickhouse.database)
    allow_readers(settings)  # the analyst's CLI query (headline_query_latency) reads its analysis database


def drop(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    from pipelines.store.clickhouse import connect

    drop_database(connect(settings, database="default"), settings.clickhouse.database)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.delete_topics(settings.topics.all(), operation_timeout=30).values():
        with contextlib.suppress(Exception):  # clean-up only
            future.result()


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- stages


def generator_alone(scale: int) -> float:
    import orjson

    from pipelines.reference.generator import build_night, night_events

    started = time.monotonic()
    night = build_night(scale, 20240812)
    count = sum(len(orjson.dumps(event)) > 0 for _, _, event in night_events(night))
    return count / (time.monotonic() - started)


def kafka_tool(settings: Settings, tool: str, args: list[str]) -> str:
    jars = settings.jars_dir / "kafka"
    out = subprocess.run(["java", "-Xmx512m", "-cp", f"{jars}/*", f"org.apache.kafka.tools.{tool}", *args],
                         check=True, capture_output=True, text=True, timeout=300)
    return out.stdout


def kafka_produce_limit(settings: Settings, topic: str) -> float:
    out = kafka_tool(settings, "ProducerPerformance", [
        "--topic", topic, "--num-records", str(PERF_RECORDS), "--record-size", str(PERF_RECORD_BYTES),
        "--throughput", "-1", "--producer-props", f"bootstrap.servers={settings.kafka_bootstrap}", "acks=all",
        "linger.ms=20", "batch.size=1000000", "compression.type=lz4"])
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    return float(re.search(r"([\d.]+) records/sec", last).group(1))


def kafka_consume_limit(settings: Settings, topic: str) -> float:
    out = kafka_tool(settings, "ConsumerPerformance", [
        "--bootstrap-server", settings.kafka_bootstrap, "--topic", topic, "--messages", str(PERF_RECORDS),
        "--group", f"perf-{secrets.token_hex(3)}", "--hide-header", "--timeout", "60000"])
    fields = out.strip().splitlines()[-1].split(",")
    return float(fields[5])  # nMsg.sec


RUN_OURS = """
import json, os, resource, sys, time
from dataclasses import replace
from pipelines.config import Settings, Topics
settings = replace(Settings.from_env(), topics=Topics(prefix=sys.argv[1]), clickhouse_url=sys.argv[2],
                   job_name=sys.argv[4])
started = time.monotonic()
if sys.argv[3] == "blackhole":
    from pipelines.stream import bounded_run, rollup_job
    end = bounded_run.EndOfInput(settings)
    total = sum(end.ends.values())
    result = rollup_job.submit(settings, bounded=True, blackhole=True)
    progress = []  # (seconds, records consumed): the job's committed offsets, every checkpoint
    bounded_run.run_to_end(result, settings, end, poll_s=0.25,
                           on_progress=lambda left: progress.append((time.monotonic() - started, total - left)))
    end.close()
    stats = {"events": total, "progress": progress}
else:
    from pipelines.stream.runner import run_pipeline
    report = run_pipeline(settings, bounded=True)
    stats = {"events": report.source_records}
seconds = time.monotonic() - started
children = [int(p) for p in os.popen(f"pgrep -P {os.getpid()}").read().split()]
def hwm(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0
print(json.dumps({"seconds": seconds, **stats,
                  "python_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "jvm_rss_mib": max([hwm(p) for p in children] or [0])}))
"""


def sustained(progress: list[tuple[float, int]], total: int) -> float:
    """Records/s between 10 % and 90 % of the total: the steady rate, without the job's start
    (planning, code generation, JIT) and its last window."""
    marks = [next(((t, n) for t, n in progress if n >= share * total), None) for share in (0.1, 0.9)]
    if None in marks or marks[1][0] <= marks[0][0]:
        return float("nan")  # too short a run: fewer than two progress samples between the marks
    (t10, n10), (t90, n90) = marks
    return (n90 - n10) / (t90 - t10)


def run_job(settings: Settings, mode: str, job_name: str = "rollup-job",
            watch: Callable[[], int] | None = None) -> tuple[dict, list[tuple[float, int]]]:
    """Run the pipeline (mode "pipeline") or the job alone into blackhole sinks in a child
    process; `watch` is polled meanwhile for the progress seen from outside."""
    child = subprocess.Popen([sys.executable, "-c", RUN_OURS, settings.topics.prefix, settings.clickhouse_url,
                              mode, job_name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    progress = []
    while child.poll() is None:
        if time.monotonic() - started > 1200:
            child.kill()
            raise RuntimeError("the pipeline run took longer than 20 minutes")
        if watch is not None:
            progress.append((time.monotonic() - started, watch()))
        time.sleep(0.25)
    out, err = child.communicate()
    if child.returncode:
        raise RuntimeError(f"the {mode} run failed: {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), progress


def ours_end_to_end(settings: Settings, scale: int) -> dict:
    """Produce the night as fast as the generator can, then time Flink + loader to the last row;
    meanwhile count the archive's rows from outside for the sustained rate."""
    from pipelines.reference.generator import generate_night
    from pipelines.store.clickhouse import connect

    truth = generate_night(settings, scale=scale, seed=20240812, progress=lambda *_: None)
    client = connect(settings)
    archive_rows = lambda: client.execute("SELECT count() FROM events_raw")[0][0]  # noqa: E731
    result, progress = run_job(settings, "pipeline", watch=archive_rows)
    (archived,), = client.execute("SELECT count() FROM events_raw")
    result["records"] = truth.deliveries
    result["events_per_s"] = truth.deliveries / result["seconds"]
    # Archive rows per second, scaled to all records (posts, presence, rejects) read meanwhile.
    result["sustained_events_per_s"] = sustained(progress, archived) * truth.deliveries / archived
    return result


def job_alone(settings: Settings) -> dict:
    """The Flink job over the same night, every sink a blackhole: the job's own limit."""
    result, _ = run_job(settings, "blackhole", job_name=f"bench-blackhole-{secrets.token_hex(3)}")
    result["events_per_s"] = result["events"] / result["seconds"]
    result["sustained_events_per_s"] = sustained(result.pop("progress"), result["events"])
    return result


def freshness_at_load(settings: Settings, rates: tuple[int, ...], period_s: float, periods: int,
                      warmup_s: float = 20.0) -> dict:
    """The live pipeline under a fixed offered load of views stamped with the time they are sent.

    Archive lag: now minus the newest event time visible in events_raw for the stalest post,
    sampled every 200 ms (the produce-to-queryable latency of the partition furthest behind; the
    newest event overall would only show the partition furthest ahead). Window delay: when a post-minute row
    first shows up, minus the end of its minute; a window cannot close before its end plus the
    watermark delay. Each rate runs `periods` periods of period_s after one warm-up.
    """
    from confluent_kafka import Producer

    from pipelines.store.clickhouse import connect

    client = connect(settings)
    env = {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
           "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url, "VIEWCOUNT_JOB_NAME": "bench-live"}
    pipeline = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5, "compression.type": "lz4",
                         "queue.buffering.max.messages": 1_000_000})
    topic = settings.topics.source("view")
    sent = 0
    windows_seen: dict[int, float] = {}
    subject_minutes_seen: dict[int, float] = {}  # the subject's root is post 1, one of the posts viewed
    results: dict[str, dict] = {}

    def offer(rate: int, seconds: float, lags: list[float] | None) -> float:
        """Offer `rate` views/s for `seconds`; returns the rate actually sent."""
        nonlocal sent
        began = time.monotonic()
        next_sample = began
        while (elapsed := time.monotonic() - began) < seconds:
            now_ms = int(time.time() * 1000)
            for _ in range(int(rate * elapsed) - (sent - offered_at_start[0])):
                sent += 1
                producer.produce(topic, *live_view(sent, now_ms))
            producer.poll(0)
            if time.monotonic() >= next_sample:
                next_sample += 0.2
                # Per post (each post is one Kafka key, so one partition), the newest event visible;
                # the stalest of those is the lag of the partition furthest behind.
                (newest,), = client.execute(
                    "SELECT min(newest) FROM (SELECT post_id, max(event_time_ms) AS newest FROM events_raw "
                    "WHERE event_time >= now() - 600 GROUP BY post_id)")
                if lags is not None and newest:
                    lags.append(time.time() - newest / 1000)
                for (start,) in client.execute("SELECT DISTINCT toUInt32(window_start) FROM post_minute"):
                    windows_seen.setdefault(start, time.time())
                for (start,) in client.execute("SELECT DISTINCT toUInt32(window_start) FROM subject_rollup "
                                               "WHERE grain = 'minute' AND subject_views > 0"):
                    subject_minutes_seen.setdefault(start, time.time())
            time.sleep(0.005)
        return (sent - offered_at_start[0]) / (time.monotonic() - began)

    offered_at_start = [0]
    try:
        # The job's start (planning, code generation, JIT: about 30 s of both cores) under a light
        # load, so that its backlog is not measured as the latency of the first rate.
        offered_at_start[0] = sent
        offer(START_LOAD, START_S, None)
        for rate in rates:
            offered_at_start[0] = sent
            offer(rate, warmup_s, None)
            runs = []
            for _ in range(periods):
                offered_at_start[0] = sent
                lags: list[float] = []
                achieved = offer(rate, period_s, lags)
                lags.sort()
                runs.append({"p50_s": lags[len(lags) // 2], "p99_s": lags[int(0.99 * (len(lags) - 1))],
                             "samples": len(lags), "sent_per_s": achieved})
            results[str(rate)] = {k: spread([r[k] for r in runs]) for k in ("p50_s", "p99_s", "sent_per_s")}
        producer.flush(30)
    finally:
        stop_group(pipeline)
    delays = sorted(seen - (start + 60) for start, seen in windows_seen.items())
    # A minute of the dashboards' subject rollup: when it first shows views, after its minute ends.
    subject_delays = sorted(seen - (start + 60) for start, seen in subject_minutes_seen.items())
    return {"archive_lag_s": results, "window_delay_s": spread(delays or [float("nan")]),
            "subject_minute_delay_s": spread(subject_delays or [float("nan")]),
            "watermark_delay_s": settings.watermark_delay_s}


def clickhouse_load_alone(settings: Settings) -> float:
    """ClickHouse's Kafka consumers alone (pipelines.stream.streams) over the job's committed output already
    in Kafka, into a fresh database: records (every valid event and rollup row) per second."""
    from pipelines.store.clickhouse import connect
    from pipelines.stream import streams

    target = replace(settings, clickhouse_url=settings.clickhouse_url + "_reload")
    prepare(target)
    consumer = f"bench-reload-{secrets.token_hex(3)}"
    client = connect(target)
    progress = streams.Progress(target, consumer=consumer)
    started = time.monotonic()
    streams.ensure(client, target, consumer=consumer)
    deadline = started + 600
    while progress.remaining() > 0:
        if time.monotonic() > deadline:
            raise RuntimeError("ClickHouse did not load the job's output within 10 minutes")
        time.sleep(0.2)
    seconds = time.monotonic() - started
    records = progress.total
    progress.close()
    drop_database(connect(target, database="default"), target.clickhouse.database)
    return records / seconds


def python_peer(settings: Settings) -> float:
    """A plain kafka-python consumer: decode, dedupe on event_id, count per post-minute, HLL, insert."""
    import orjson
    from kafka import KafkaConsumer

    from pipelines.rollups import sketches
    from pipelines.store.clickhouse import connect

    client = connect(settings)
    client.execute("CREATE TABLE IF NOT EXISTS peer_post_minute (post_id UInt64, window_start DateTime, "
                   "views UInt64, impressions UInt64, sketch String) "
                   "ENGINE = MergeTree ORDER BY (post_id, window_start)")
    topics = [settings.topics.source("view"), settings.topics.source("impression")]
    consumer = KafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap,
                             group_id=f"peer-{secrets.token_hex(3)}",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=5000,
                             max_poll_records=10_000, fetch_max_bytes=64 * 1024 * 1024)
    seen: set[str] = set()
    windows: dict[tuple, list] = {}
    started = time.monotonic()
    records = 0
    for message in consumer:
        records += 1
        try:
            event = orjson.loads(message.value)
            key = (event["post_id"], event["event_time"] // 60_000 * 60)
            event_id = event["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if event_id in seen:
            continue
        seen.add(event_id)
        window = windows.setdefault(key, [0, 0, []])
        if "action" in event:
            window[1] += 1
        else:
            window[0] += 1
            window[2].append(event["viewer_id"])
    idle = 5.0  # consumer_timeout_ms: the loop ends 5 s after the last record
    rows = [(post, datetime.fromtimestamp(minute, UTC), v, i, sketches.to_bytes(sketches.sketch_of(ids)))
            for (post, minute), (v, i, ids) in windows.items()]
    client.execute("INSERT INTO peer_post_minute (post_id, window_start, views, impressions, sketch) VALUES", rows)
    consumer.close()
    return records / (time.monotonic() - started - idle)


def clickhouse_kafka_engine_peer(settings: Settings) -> dict:
    """ClickHouse 18.16's own Kafka engine -> materialized view -> AggregatingMergeTree (no exact dedupe)."""
    from pipelines.store.clickhouse import connect

    client = connect(settings)
    topic = settings.topics.source("view")
    try:
        client.execute(f"CREATE TABLE kafka_views (event_id String, event_time UInt64, post_id UInt64, "
                       f"author_id UInt64, viewer_id UInt64, surface String, client String) "
                       f"ENGINE = Kafka('{settings.kafka_bootstrap}', '{topic}', "
                       f"'ch-peer-{secrets.token_hex(3)}', 'JSONEachRow')")
        client.execute("CREATE TABLE ch_post_minute (post_id UInt64, window_start DateTime, "
                       "views AggregateFunction(count), viewers AggregateFunction(uniqCombined, UInt64)) "
                       "ENGINE = AggregatingMergeTree ORDER BY (post_id, window_start)")
        started = time.monotonic()
        client.execute("CREATE MATERIALIZED VIEW ch_post_minute_mv TO ch_post_minute AS SELECT post_id, "
                       "toStartOfMinute(toDateTime(intDiv(event_time, 1000))) AS window_start, countState() AS views, "
                       "uniqCombinedState(viewer_id) AS viewers FROM kafka_views GROUP BY post_id, window_start")
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        expected = sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions)
        probe.close()
        deadline = time.monotonic() + CH_PEER_WAIT_S
        loaded = 0
        while time.monotonic() < deadline:
            loaded = client.execute("SELECT countMerge(views) FROM ch_post_minute")[0][0]
            if loaded >= expected:
                return {"events_per_s": loaded / (time.monotonic() - started), "loaded": loaded, "expected": expected}
            time.sleep(0.5)
        return {"error": f"loaded {loaded} of {expected} view records in {CH_PEER_WAIT_S} s",
                "loaded": loaded, "expected": expected}
    except Exception as exc:  # noqa: BLE001 - a peer that cannot run is a finding, reported as such
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    finally:
        for statement in ("DROP TABLE IF EXISTS ch_post_minute_mv", "DROP TABLE IF EXISTS kafka_views",
                          "DROP TABLE IF EXISTS ch_post_minute"):
            client.execute(statement)


def headline_query_latency(settings: Settings, repeats: int = 10) -> dict:
    from pipelines.rollups.subjects import get_subject
    from pipelines.serve import figures_from_rollups, query
    from pipelines.store.clickhouse import connect

    client = connect(settings)
    subject = get_subject("space-2024-08-12")
    start, end = query.parse_range("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")
    api = []
    for _ in range(repeats):
        began = time.monotonic()
        figures_from_rollups.subject_rollup_figures(client, subject, start, end)
        api.append(time.monotonic() - began)
    target = settings.clickhouse_as("analyst")
    database = settings.clickhouse.analysis_database
    sql = ("SELECT sum(views), sum(impressions) FROM post_minute FINAL WHERE post_id = 1 "
           "AND window_start >= '2024-08-12 23:47:00' AND window_start < '2024-08-13 02:47:00'")
    cli = []
    for _ in range(repeats):
        began = time.monotonic()
        subprocess.run(["clickhouse-client", "--host", target.host, "--port", str(target.port), "--user", target.user,
                        "--password", target.password, "--database", database, "--query", sql],
                       check=True, capture_output=True)
        cli.append(time.monotonic() - began)
    return {"api_p50_ms": 1000 * statistics.median(api), "api_p99_ms": 1000 * sorted(api)[int(0.99 * (len(api) - 1))],
            "cli_p50_ms": 1000 * statistics.median(cli), "cli_p99_ms": 1000 * sorted(cli)[int(0.99 * (len(cli) - 1))]}


# ---------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", type=int, nargs="+", default=[10_000, 25_000],
                        help="offered loads (events/s) for the produce-to-queryable latency")
    parser.add_argument("--period", type=float, default=20.0, help="seconds per latency measurement")
    parser.add_argument("--freshness-only", action="store_true",
                        help="only the produce-to-queryable latency (bench/results/freshness.json)")
    args = parser.parse_args(argv)
    base = Settings.from_env()
    if args.freshness_only:
        live = isolated(base, secrets.token_hex(3))
        prepare(live)
        try:
            freshness = freshness_at_load(live, tuple(args.rates), period_s=args.period, periods=args.runs)
        finally:
            drop(live)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "freshness.json").write_text(json.dumps(freshness, indent=2))
        print(json.dumps(freshness, indent=2))
        return 0
    from pipelines.stack.clickhouse_server import clickhouse_service
    from pipelines.stack.kafka_broker import kafka_service

    figures: dict[str, list] = {k: [] for k in (
        "generator", "kafka_produce", "kafka_consume", "ours", "ours_sustained", "job_alone", "job_alone_sustained",
        "loader", "python_peer")}
    memory: dict[str, list] = {"job_jvm": [], "loader_python": [], "job_alone_jvm": []}
    ch_peer, queries = [], []
    for run in range(args.runs):
        tag = f"{secrets.token_hex(3)}"
        settings = isolated(base, tag)
        prepare(settings)
        print(f"run {run + 1}/{args.runs}", file=sys.stderr)
        try:
            figures["generator"].append(generator_alone(args.scale))
            perf_topic = f"{settings.topics.prefix}.perf"
            figures["kafka_produce"].append(kafka_produce_limit(settings, perf_topic))
            figures["kafka_consume"].append(kafka_consume_limit(settings, perf_topic))
            result = ours_end_to_end(settings, args.scale)
            figures["ours"].append(result["events_per_s"])
            figures["ours_sustained"].append(result["sustained_events_per_s"])
            memory["job_jvm"].append(result["jvm_rss_mib"])
            memory["loader_python"].append(result["python_rss_mib"])
            alone = job_alone(settings)
            figures["job_alone"].append(alone["events_per_s"])
            figures["job_alone_sustained"].append(alone["sustained_events_per_s"])
            memory["job_alone_jvm"].append(alone["jvm_rss_mib"])
            figures["loader"].append(clickhouse_load_alone(settings))
            figures["python_peer"].append(python_peer(settings))
            ch_peer.append(clickhouse_kafka_engine_peer(settings))
            try:
                queries.append(headline_query_latency(settings))
            except Exception as exc:  # noqa: BLE001 - a figure that cannot be had says why, the rest stands
                print(f"headline query not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            drop(settings)
    live = isolated(base, secrets.token_hex(3))
    prepare(live)
    print(f"live: offered load {args.rates}", file=sys.stderr)
    try:
        freshness = freshness_at_load(live, tuple(args.rates), period_s=args.period, periods=args.runs)
    finally:
        drop(live)
    services = {svc.name: peak_rss_mib(pid) for svc in (kafka_service(base), clickhouse_service(base))
                if (pid := svc.running_pid())}
    summary = {name: spread(values) for name, values in figures.items()}
    ratios = {
        "ours / kafka consume limit": summary["ours"]["median"] / summary["kafka_consume"]["median"],
        "python peer / ours": summary["python_peer"]["median"] / summary["ours"]["median"],
        "clickhouse loading alone / ours": summary["loader"]["median"] / summary["ours"]["median"],
        "job alone (blackhole sinks) / ours": summary["job_alone"]["median"] / summary["ours"]["median"],
        "ours sustained / ours": summary["ours_sustained"]["median"] / summary["ours"]["median"],
        "ours sustained / target 100,000": summary["ours_sustained"]["median"] / 100_000,
        "generator alone / ours": summary["generator"]["median"] / summary["ours"]["median"],
    }
    ch_rates = [p["events_per_s"] for p in ch_peer if "events_per_s" in p]
    if ch_rates:
        summary["clickhouse_kafka_engine_peer"] = spread(ch_rates)
        ratios["clickhouse kafka engine peer / ours"] = statistics.median(ch_rates) / summary["ours"]["median"]
    report = {
        "command": (f".venv/bin/python -m bench.pipeline --scale {args.scale} --runs {args.runs} "
                    f"--rates {' '.join(map(str, args.rates))} --period {args.period:g}"),
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "scale": args.scale, "events_per_second": summary, "ratios": ratios,
        "peak_rss_mib": {**{k: spread(v) for k, v in memory.items()}, **services},
        "clickhouse_kafka_engine_peer": ch_peer,
        "headline_query_ms": {k: spread([q[k] for q in queries]) for k in queries[0]} if queries else {},
        "freshness": freshness,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps(report, indent=2))
    write_markdown(report)
    plot(report)
    print((RESULTS / "pipeline.md").read_text())
    return 0


LABELS = {
    "generator": "generator alone (build + serialize, no Kafka)",
    "kafka_produce": "Kafka produce limit (kafka ProducerPerformance, 200 B)",
    "kafka_consume": "Kafka consume limit (kafka ConsumerPerformance)",
    "ours": "ours end to end (Flink job + loader, to the last row in ClickHouse)",
    "ours_sustained": "ours end to end, sustained (10 % to 90 % of the archive's rows)",
    "job_alone": "Flink job alone, blackhole sinks (start to drained)",
    "job_alone_sustained": "Flink job alone, blackhole sinks, sustained (10 % to 90 % of offsets)",
    "loader": "ClickHouse loading the job output alone (its Kafka engine: valid events + rollups)",
    "python_peer": "peer: plain kafka-python consumer (dedupe, count, HLL, insert)",
    "clickhouse_kafka_engine_peer":
        "peer: ClickHouse Kafka engine -> MV -> AggregatingMergeTree (views only, no dedupe)",
}


def write_markdown(report: dict) -> None:
    lines = [f"# Pipeline benchmark at 1:{report['scale']}", "",
             f"`{report['command']}` ({report['when']}, {report['cpus']} CPUs; every service on this one box).", "",
             "| stage | events/s min | median | max |", "|---|---|---|---|"]
    for name, s in report["events_per_second"].items():
        lines.append(f"| {LABELS.get(name, name)} | {s['min']:,.0f} | {s['median']:,.0f} | {s['max']:,.0f} |")
    lines += ["", "| ratio (medians) | value |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in report["ratios"].items()]
    lines += ["", "| peak RSS, MiB | value |", "|---|---|"]
    for name, value in report["peak_rss_mib"].items():
        text = (f"{value['min']:.0f} / {value['median']:.0f} / {value['max']:.0f}" if isinstance(value, dict)
                else f"{value:.0f}")
        lines.append(f"| {name} | {text} |")
    lines += ["", "| headline query (3 h of the night) | min / median / max over runs, ms |", "|---|---|"]
    for name, s in report["headline_query_ms"].items():
        lines.append(f"| {name} | {s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f} |")
    fresh = report["freshness"]
    lines += ["", "| offered load, views/s | sent, views/s (median) | archive lag p50, s (min / median / max) "
              "| p99, s |", "|---|---|---|---|"]
    for rate, lag in fresh["archive_lag_s"].items():
        lines.append(f"| {int(rate):,} | {lag['sent_per_s']['median']:,.0f} | {lag['p50_s']['min']:.1f} / "
                     f"{lag['p50_s']['median']:.1f} / "
                     f"{lag['p50_s']['max']:.1f} | {lag['p99_s']['min']:.1f} / {lag['p99_s']['median']:.1f} / "
                     f"{lag['p99_s']['max']:.1f} |")
    w = fresh["window_delay_s"]
    lines += ["", f"Post-minute rows appear {w['min']:.1f} / {w['median']:.1f} / {w['max']:.1f} s (min / median / max, "
              f"{len(w['runs'])} windows) after their minute ends; the watermark alone holds a window "
              f"{fresh['watermark_delay_s']} s."]
    d = fresh["subject_minute_delay_s"]
    lines += ["", f"The subject rollup's minutes (what dashboards read) show their views {d['min']:.1f} / "
              f"{d['median']:.1f} / {d['max']:.1f} s after their minute ends ({len(d['runs'])} minutes)."]
    errors = [p["error"] for p in report["clickhouse_kafka_engine_peer"] if "error" in p]
    if errors:
        lines += ["", f"ClickHouse Kafka engine peer: {errors[0]}"]
    (RESULTS / "pipeline.md").write_text("\n".join(lines) + "\n")


def plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["events_per_second"])
    medians = [report["events_per_second"][n]["median"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh([LABELS.get(n, n)[:60] for n in names], medians, color=["#888" if n != "ours" else "#c33" for n in names])
    ax.axvline(100_000, linestyle="--", color="k", linewidth=1)
    ax.text(100_000, -0.8, " target 100k/s", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("events/s (median, log scale)")
    ax.set_title(f"viewcount at 1:{report['scale']}, one 2-core box")
    fig.tight_layout()
    fig.savefig(RESULTS / "pipeline.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
