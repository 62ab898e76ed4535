"""Benchmark: time and peak memory of backfilling one hour and three hours of the night at 1:100.

    .venv/bin/python -m bench.backfill [--scale 100] [--runs 3]

Fills a database of its own (viewcount_bench) on the configured ClickHouse with the night's
archive (events_raw, duplicates included, as the stream delivers it), then runs each backfill
in a fresh child process, so that its peak memory is its own. Writes bench/results/backfill.{md,json}.

Peak memory is the child's VmHWM (/proc/self/status): the high-water RSS of its own address
space. getrusage's ru_maxrss is not used: Linux carries it across fork and exec, so a child of
this process (which held the whole night's arrays while filling) reported the parent's 2.6 GiB.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipelines.config import Settings
from pipelines.reference.generator import IMPRESSION, VIEW, build_night, event_id
from pipelines.store.clickhouse import connect
from pipelines.store.migrate import apply_migrations, drop_database

RESULTS = Path(__file__).parent / "results"
DATABASE = "viewcount_bench"
# The night's three busiest UTC hours, and the busiest one alone.
ONE_HOUR = ["2024-08-13T02:00:00+00:00"]
THREE_HOURS = ["2024-08-13T00:00:00+00:00", "2024-08-13T01:00:00+00:00", "2024-08-13T02:00:00+00:00"]


def bench_settings() -> Settings:
    base = Settings.from_env()
    t = base.clickhouse
    return replace(base, clickhouse_url=t.url(DATABASE))


def fill_archive(settings: Settings, scale: int, seed: int) -> int:
    admin = connect(settings, database="default")
    drop_database(admin, DATABASE)
    apply_migrations(admin, DATABASE)
    client = connect(settings)
    night = build_night(scale, seed)
    counted = np.flatnonzero((night.kind == VIEW) | (night.kind == IMPRESSION))
    columns = "event_type, event_id, event_time, event_time_ms, post_id, author_id, viewer_id, surface, client, action"
    step = 500_000
    for start in range(0, len(counted), step):
        take = counted[start:start + step]
        ms = night.event_time[take]
        kinds = night.kind[take]
        client.execute(f"INSERT INTO events_raw ({columns}) VALUES", [
            np.where(kinds == VIEW, "view", "impression").tolist(),
            [event_id(seed, i) for i in night.event_index[take].tolist()],
            [datetime.fromtimestamp(s, UTC) for s in (ms // 1000).tolist()],
            ms.tolist(), night.post_id[take].tolist(), night.author_id[take].tolist(),
            night.viewer_id[take].tolist(), ["home"] * len(take), ["ios"] * len(take),
            np.where(kinds == VIEW, "", "like").tolist(),
        ], columnar=True)
    return len(counted)


CHILD = """
import json, sys, time
from datetime import datetime
from pipelines.repair.backfill import rebuild_hour
from pipelines.store.clickhouse import connect
from pipelines.config import Settings
from dataclasses import replace

def high_water_mib(field="VmHWM"):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024

settings = replace(Settings.from_env(), clickhouse_url=sys.argv[1])
client = connect(settings)
baseline = high_water_mib()
started = time.monotonic()
reports = [rebuild_hour(client, datetime.fromisoformat(h)) for h in sys.argv[2:]]
print(json.dumps({"seconds": time.monotonic() - started, "rows": sum(r.rows for r in reports),
                  "views": sum(r.views for r in reports), "peak_rss_mib": high_water_mib(),
                  "baseline_rss_mib": baseline}))
"""


def run_backfill(settings: Settings, hours: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, settings.clickhouse_url, *hours],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240812)
    parser.add_argument("--keep", action="store_true",
                        help=f"reuse {DATABASE} as a previous run filled it (same scale and seed) and keep it")
    args = parser.parse_args(argv)
    settings = bench_settings()
    started = time.monotonic()
    if args.keep and _filled(settings):
        ((archived,),) = connect(settings).execute("SELECT count() FROM events_raw")
    else:
        archived = fill_archive(settings, args.scale, args.seed)
    fill_seconds = time.monotonic() - started
    results = {}
    for name, hours in (("one hour", ONE_HOUR), ("three hours", THREE_HOURS)):
        runs = [run_backfill(settings, hours) for _ in range(args.runs)]
        results[name] = {
            "hours": hours, "rows": runs[0]["rows"], "views": runs[0]["views"],
            "seconds": spread([r["seconds"] for r in runs]),
            "peak_rss_mib": spread([r["peak_rss_mib"] for r in runs]),
            "baseline_rss_mib": spread([r["baseline_rss_mib"] for r in runs]),
            "views_per_second": spread([r["views"] / r["seconds"] for r in runs]),
        }
    report = {
        "command": f".venv/bin/python -m bench.backfill --scale {args.scale} --runs {args.runs}"
                   + (" --keep" if args.keep else ""),
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "scale": args.scale, "archived_events": archived, "fill_seconds": round(fill_seconds, 1),
        "results": results,
        "ratio_three_to_one_hour": {
            "seconds": results["three hours"]["seconds"]["median"] / results["one hour"]["seconds"]["median"],
            "peak_rss": (results["three hours"]["peak_rss_mib"]["median"]
                         / results["one hour"]["peak_rss_mib"]["median"]),
            "views": results["three hours"]["views"] / results["one hour"]["views"],
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backfill.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Backfill at 1:{args.scale}", "", f"`{report['command']}` ({report['when']}); "
             f"{archived:,} rows in events_raw (duplicate deliveries not yet merged away included), "
             f"{'reused from a previous fill' if args.keep else f'filled in {fill_seconds:.0f} s'}.", "",
             "| backfill | rows | views | seconds min / median / max | peak RSS MiB min / median / max "
             "| RSS before MiB | views/s (median) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s, m = r["seconds"], r["peak_rss_mib"]
        lines.append(f"| {name} | {r['rows']:,} | {r['views']:,} | {s['min']:.1f} / {s['median']:.1f} / {s['max']:.1f} "
                     f"| {m['min']:.0f} / {m['median']:.0f} / {m['max']:.0f} | {r['baseline_rss_mib']['median']:.0f} "
                     f"| {r['views_per_second']['median']:,.0f} |")
    ratio = report["ratio_three_to_one_hour"]
    lines += ["", f"Three hours vs one: {ratio['views']:.2f}x the views, {ratio['seconds']:.2f}x the time, "
              f"{ratio['peak_rss']:.2f}x the peak memory (memory is bounded by one chunk of posts, "
              "backfill.CHUNK_EVENTS archived events, not by the hour or the range)."]
    (RESULTS / "backfill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        drop_database(connect(settings, database="default"), DATABASE)
    return 0


def _filled(settings: Settings) -> bool:
    admin = connect(settings, database="default")
    exists = admin.execute("SELECT count() FROM system.tables WHERE database = %(db)s AND name = 'events_raw'",
                           {"db": DATABASE})[0][0]
    return bool(exists) and connect(settings).execute("SELECT count() FROM events_raw")[0][0] > 0


if __name__ == "__main__":
    sys.exit(main())
