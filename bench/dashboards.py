"""Benchmark: the 3-hour headline through the dashboards API, and 200 pollers at 1 request/s.

    .venv/bin/python -m bench.dashboards [--scale 100] [--unrelated-posts 1000000] [--requests 100]
                                         [--pollers 200] [--poll-seconds 30] [--keep]

Fills a database of its own (viewcount_bench_dash) on the configured ClickHouse straight from
the generator's night (pipelines.reference.night_tables: archive, posts, presence, hours rebuilt; no
Flink), adds unrelated posts to `posts`, builds the subject rollups (timed), then starts
`viewcount serve` in this process:
- headline: the published window's figures (7:47 PM to 10:47 PM ET) through the API with the
  cache off (TTL 0), so every request reaches ClickHouse; p50/p99. Side by side, the query-time
  figures (figures_from_posts.subject_figures, which reads every post) on the same data, and their ratio.
- pollers: N asyncio tasks on keep-alive connections (in 4 processes), each asking the live
  page's four requests in turn at 1 request/s with
  the cache on (TTL 2 s); p99 of the answers, and ClickHouse queries per distinct request per
  TTL from system.query_log (user dashboard) when the server logs them, else from the API's
  own count (said in the result).
- freshness: a refresh after new rows of one minute (what the runner does every few seconds).
Writes bench/results/dashboards.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import Settings
from pipelines.rollups import sketches, subject_rollups
from pipelines.rollups.subjects import load_subjects
from pipelines.serve import figures_from_posts
from pipelines.store.clickhouse import POST_MINUTE, connect, insert_rows
from pipelines.store.migrate import apply_migrations

RESULTS = Path(__file__).parent / "results"
DATABASE = "viewcount_bench_dash"
WINDOW = (datetime(2024, 8, 12, 23, 47, tzinfo=UTC), datetime(2024, 8, 13, 2, 47, tzinfo=UTC))
PUBLISHED = "from=2024-08-12T19:47&to=2024-08-12T22:47"
GOALS = {"headline_p50_ms": 50, "headline_p99_ms": 150, "pollers_p99_ms": 100}


def bench_settings() -> Settings:
    base = Settings.from_env()
    t = base.clickhouse
    return replace(base, clickhouse_url=t.url(DATABASE))


def fill(settings: Settings, scale: int, seed: int, unrelated: int) -> dict:
    from pipelines.reference.generator import build_night
    from pipelines.reference.night_tables import fill_night, fill_unrelated_posts
    from pipelines.stack.clickhouse_server import allow_readers
    from pipelines.store.migrate import drop_database

    admin = connect(settings, database="default")
    drop_database(admin, DATABASE)
    apply_migrations(admin, DATABASE)
    allow_readers(settings)
    client = connect(settings)
    started = time.monotonic()
    written = fill_night(client, build_night(scale, seed))
    written["unrelated_posts"] = fill_unrelated_posts(client, unrelated) if unrelated else 0
    written["fill_seconds"] = round(time.monotonic() - started, 1)
    return written


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status}")
    return (time.perf_counter() - started) * 1000


def start_server(settings: Settings, ttl_s: float):
    import socket

    import uvicorn

    from pipelines.serve.api import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The pollers all come from 127.0.0.1: one client address to the per-client rate limit, which
    # would refuse them (429). The benchmark measures the cache and ClickHouse, not the limit.
    app = create_app(replace(settings, api_rate_per_s=0), ttl_s=ttl_s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           limit_concurrency=1000, backlog=2048))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            timed_get(f"{base}/openapi.json")
            return server, base, app
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def headline(settings: Settings, requests: int) -> dict:
    server, base, _ = start_server(settings, ttl_s=0.0)
    try:
        subject = next(iter(load_subjects().values()))
        url = f"{base}/api/subjects/{subject.id}/figures?{PUBLISHED}"
        timed_get(url)  # warm: imports, connection
        samples = [timed_get(url) for _ in range(requests)]
    finally:
        server.should_exit = True
    return {"requests": requests, "p50_ms": round(statistics.median(samples), 1),
            "p99_ms": round(percentile(samples, 99), 1), "max_ms": round(max(samples), 1)}


def query_time(settings: Settings, runs: int) -> dict:
    client = connect(settings)
    subject = next(iter(load_subjects().values()))
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        figures_from_posts.subject_figures(client, subject, *WINDOW)
        samples.append((time.perf_counter() - started) * 1000)
    return {"runs": runs, "p50_ms": round(statistics.median(samples), 1)}


def query_log_count(settings: Settings, since: datetime) -> int | None:
    client = connect(settings)
    try:
        client.execute("SYSTEM FLUSH LOGS")
        ((count,),) = client.execute(
            "SELECT count() FROM system.query_log WHERE user = 'dashboard' AND type = 2 "
            "AND event_time >= %(since)s AND query NOT LIKE 'SELECT 1%%'", {"since": since})
        # The stack's users do not log queries (log_queries 0: every user can read the log in
        # 18.16, docs/access.md): no rows means nothing logged, not zero queries.
        return count or None
    except Exception:  # noqa: BLE001 - no query_log on this server: said in the result
        return None


POLLER_PROCESSES = 4


async def _keep_alive_get(reader, writer, host: str, path: str) -> None:
    """One HTTP/1.1 GET on an open keep-alive connection; the whole answer is read."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"{path}: {status.decode()}")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


async def _poll_all(base: str, paths: list[str], indexes: list[int], start_at: float, seconds: float):
    import asyncio
    from urllib.parse import urlsplit

    url = urlsplit(base)
    samples: list[float] = []
    errors: list[str] = []
    stop_at = start_at + seconds

    async def poll(index: int) -> None:
        # A dashboard keeps its connection open between polls, as a browser does.
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        n, next_at = index, start_at + (index % 100) / 100  # spread the pollers over each second
        try:
            while next_at < stop_at:
                await asyncio.sleep(max(0.0, next_at - time.time()))
                started = time.perf_counter()
                try:
                    await _keep_alive_get(reader, writer, url.netloc, paths[n % len(paths)])
                    samples.append((time.perf_counter() - started) * 1000)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(url.hostname, url.port)
                n += 1
                next_at += 1.0
        finally:
            writer.close()

    await asyncio.gather(*(poll(i) for i in indexes))
    return samples, errors


def poll_worker(base: str, paths: list[str], indexes: list[int], start_at: float, seconds: float):
    """Pollers `indexes` (one asyncio task and one keep-alive connection each) asking paths in
    turn at 1 request/s from start_at (wall clock) for `seconds`; returns (latencies in ms, errors).
    One event loop per process: a thread per poller would measure the interpreter lock instead."""
    import asyncio

    return asyncio.run(_poll_all(base, paths, indexes, start_at, seconds))


def pollers(settings: Settings, count: int, seconds: float, ttl_s: float) -> dict:
    server, base, app = start_server(settings, ttl_s=ttl_s)
    subject = next(iter(load_subjects().values()))
    paths = [f"/api/subjects/{subject.id}/figures?{PUBLISHED}",
             f"/api/subjects/{subject.id}/series?grain=minute&{PUBLISHED}",
             f"/api/subjects/{subject.id}/listeners?{PUBLISHED}", "/api/health"]
    for path in paths:  # warm: the first answer of each is not what a poller sees in steady state
        timed_get(base + path)
    ((server_start,),) = connect(settings).execute("SELECT now()")
    computations_before = app.state.cache.computations
    queries_before = app.state.database.queries
    # The pollers run in processes of their own: in the server's process their threads would
    # compete with it for the interpreter lock and measure that instead.
    processes = POLLER_PROCESSES
    lead_s = 10.0  # the worker processes start (spawn: no copy of the server's threads) before polling
    start_at = time.time() + lead_s
    started = time.monotonic() + lead_s
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(poll_worker, base, paths, list(range(i, count, processes)), start_at, seconds)
                   for i in range(processes)]
        parts = [f.result() for f in futures]
    samples = [ms for part in parts for ms in part[0]]
    errors = [e for part in parts for e in part[1]]
    elapsed = time.monotonic() - started
    computations = app.state.cache.computations - computations_before
    queries = app.state.database.queries - queries_before
    server.should_exit = True
    logged = query_log_count(settings, server_start)
    windows = len(paths) * elapsed / ttl_s  # distinct requests x TTL windows in the run
    return {
        "pollers": count, "seconds": round(elapsed, 1), "answers": len(samples), "errors": len(errors),
        "first_errors": errors[:3], "rate_per_s": round(len(samples) / elapsed, 1),
        "p50_ms": round(statistics.median(samples), 1), "p99_ms": round(percentile(samples, 99), 1),
        "ttl_s": ttl_s, "distinct_requests": len(paths), "api_computations": computations,
        "computations_per_request_per_ttl": round(computations / windows, 2),
        "clickhouse_queries_sent": queries,
        "clickhouse_queries_sent_per_request_per_ttl": round(queries / windows, 2),
        "clickhouse_queries_logged": logged,
        "clickhouse_queries_per_request_per_ttl": round(logged / windows, 2) if logged is not None else None,
    }


def freshness(settings: Settings) -> dict:
    """New rows of one minute (the root and a post about it), then one refresh: its duration is
    what a closed minute waits for after the loader wrote it."""
    client = connect(settings)
    subject = next(iter(load_subjects().values()))
    subject_rollups.refresh(client)
    minute = datetime(2024, 8, 13, 2, 46, tzinfo=UTC)
    (member,) = client.execute("SELECT post_id FROM subject_posts WHERE subject_id = %(s)s LIMIT 1",
                               {"s": subject.id})[0]
    sketch = sketches.sketch_of([3, 4, 5])
    rows = [(post_id, minute, 3, 0, sketches.to_bytes(sketch), sketch.get_estimate(), 2**61)
            for post_id in (subject.root_post_id, member)]
    insert_rows(client, POST_MINUTE, ("post_id", "window_start", "views", "impressions", "unique_viewers_sketch",
                                      "unique_viewers", "version"), rows)
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        reports = subject_rollups.refresh(client)
        samples.append((time.perf_counter() - started) * 1000)
        client.execute("INSERT INTO post_minute (post_id, window_start, views, impressions, unique_viewers_sketch, "
                       "unique_viewers, version) VALUES", rows)
    return {"refresh_ms": [round(s) for s in samples], "minutes_rewritten": reports[0].minutes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20240812)
    parser.add_argument("--unrelated-posts", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--query-time-runs", type=int, default=3)
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--poll-seconds", type=float, default=30)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help=f"reuse {DATABASE} as the previous run filled it")
    parser.add_argument("--pollers-only", action="store_true", help="with --keep: only the pollers")
    args = parser.parse_args(argv)
    settings = bench_settings()
    result: dict = {"scale": args.scale, "seed": args.seed, "unrelated_posts": args.unrelated_posts,
                    "machine": f"{platform.node()} {platform.machine()}", "goals": GOALS,
                    "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if not args.keep:
        result["fill"] = fill(settings, args.scale, args.seed, args.unrelated_posts)
    started = time.monotonic()
    reports = subject_rollups.refresh(connect(settings))  # from scratch if never built
    if any(r.full for r in reports):
        result["rollup_build_seconds"] = round(time.monotonic() - started, 1)
    ((posts,),) = connect(settings).execute("SELECT count() FROM posts")
    result["posts_in_table"] = posts
    name = f"dashboards-1to{args.scale}"
    if args.pollers_only:  # the other figures from the previous run
        previous = json.loads((RESULTS / f"{name}.json").read_text())
        result.update({k: previous[k] for k in ("headline_api", "headline_query_time", "headline_speedup",
                                                 "freshness", "fill", "rollup_build_seconds") if k in previous})
    else:
        result["headline_api"] = headline(settings, args.requests)
        result["headline_query_time"] = query_time(settings, args.query_time_runs)
        result["headline_speedup"] = round(
            result["headline_query_time"]["p50_ms"] / result["headline_api"]["p50_ms"], 1)
    result["pollers"] = pollers(settings, args.pollers, args.poll_seconds, args.ttl)
    if not args.pollers_only:
        result["freshness"] = freshness(settings)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    h, q, p = result["headline_api"], result["headline_query_time"], result["pollers"]
    lines = [
        f"# Dashboards at 1:{args.scale} ({posts:,} posts in `posts`)", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| 3-hour headline through the API, p50 | {h['p50_ms']} ms | {GOALS['headline_p50_ms']} ms |",
        f"| 3-hour headline through the API, p99 | {h['p99_ms']} ms | {GOALS['headline_p99_ms']} ms |",
        f"| same figures at query time (figures_from_posts.subject_figures), p50 | {q['p50_ms']} ms | |",
        f"| ratio query time / rollups | {result['headline_speedup']}x | |",
        f"| {p['pollers']} pollers at 1 request/s, p99 | {p['p99_ms']} ms | {GOALS['pollers_p99_ms']} ms |",
        f"| pollers: answers, errors | {p['answers']:,}, {p['errors']} | |",
        f"| ClickHouse queries per distinct request per TTL ({p['ttl_s']} s), query_log | "
        f"{p['clickhouse_queries_per_request_per_ttl']} | 1 API computation (+ its queries) |",
        f"| API computations per distinct request per TTL | {p['computations_per_request_per_ttl']} | <= 1 |",
        f"| ClickHouse queries sent per distinct request per TTL (the API's count) | "
        f"{p['clickhouse_queries_sent_per_request_per_ttl']} | |",
        f"| refresh after new rows of a minute | {result['freshness']['refresh_ms']} ms | within 15 s |",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
