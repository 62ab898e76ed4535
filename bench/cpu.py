"""Benchmark: whole-stack CPU per record in catch-up, ours beside the engine's ceiling (issue 18).

    .venv/bin/python -m bench.cpu [--scale 400] [--rungs 0] [--skip-ours] [--name cpu]   (make bench-cpu)

Pre-loads the reference night into topics and a database of their own, then runs, each as a
child process so that its CPU is its own: our pipeline (`python -m pipelines.cli run --bounded`:
the Flink job, ClickHouse's Kafka consumers, the loader) and the minimal Flink job of
bench.ceiling (rung 0; other rungs of its ladder with --rungs). Once a second it reads user +
system CPU (fields 14 and 15 of /proc/PID/stat, plus 16 and 17, the CPU of reaped children) of
the job's process tree (its Python process, its JVM), the Kafka broker, clickhouse-server and
this process, and how far the job has read: its committed offsets (its consumer group, committed
on every checkpoint, every 10 s), or with `--progress gauges` also its Kafka sources'
`currentOffset` gauges from the job's REST API (the child's Flink log names its port). The gauges
cut the steady part finer, but asking for them each second costs the measured JVM CPU (Flink
gathers every task's metrics to answer): side by side on 6 Dec, 1:400, the whole run took 47.5 and
40.0 us a record with them, 36.5 and 39.1 without. So they are not the default.
Reported: microseconds of CPU per record for the steady part (from the first sample at which the
job has read past 10 % of the backlog to the first past 80 %) and for the whole run (child start
to exit, ClickHouse's load included for ours), and the steady rate.
Writes bench/results/<name>.{md,json}; the last line printed is the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.proc_cpu import (
    CLK_TCK,
    JOB_GROUPS,
    STEADY,
    Sample,
    job_ticks,
    read_procs,
    steady_figures,
    tree_rss_bytes,
    tree_ticks,
    us_per_record,
)
from pipelines.config import EVENT_TYPES, Settings

RESULTS = Path(__file__).parent / "results"
SAMPLE_EVERY_S = 1.0
RUN_DEADLINE_S = 1800.0



# ---------------------------------------------------------------- measuring a child


def service_pids(settings: Settings) -> dict[str, int]:
    from pipelines.stack.clickhouse_server import clickhouse_service
    from pipelines.stack.kafka_broker import kafka_service

    pids = {"broker": kafka_service(settings).running_pid(),
            "clickhouse": clickhouse_service(settings).running_pid()}
    missing = [name for name, pid in pids.items() if pid is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not running: run `make up`")
    return pids


def child_env(settings: Settings) -> dict[str, str]:
    """A child's environment: settings' topic prefix, database and job name; this checkout's code."""
    return {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
            "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url, "VIEWCOUNT_JOB_NAME": settings.job_name,
            "VIEWCOUNT_STATE_DIR": str(settings.state_dir), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def stack_ticks(services: dict[str, int], child: int | None) -> dict[str, int]:
    """CPU ticks so far of each service's tree, this process, and the child's tree split."""
    procs = read_procs()
    ticks = {name: tree_ticks(procs, pid) for name, pid in services.items()}
    me = os.getpid()
    ticks["bench"] = procs[me].own_ticks if me in procs else 0
    if child is not None:
        ticks.update(job_ticks(procs, child))
    return ticks


class JobReads:
    """How far a child's job has read each source partition, from its REST API: the sources'
    `currentOffset` gauges (pipelines.stream.flink_rest). The child picks its REST port; its Flink
    log names it. {} until the job runs (and after a restart): committed offsets stand then."""

    REST = re.compile(r"Rest endpoint listening at ([0-9.]+:\d+)")

    def __init__(self, settings: Settings, flink_logs: Path, topics: list[str]):
        self.settings, self.flink_logs, self.topics = settings, flink_logs, topics
        self.positions = None

    def _find(self):
        from pipelines.stream.flink_rest import SourcePositions

        for log in self.flink_logs.glob("*.log"):
            found = self.REST.search(log.read_text(errors="replace"))
            if found:
                rest = f"http://{found[1]}"
                with urllib.request.urlopen(f"{rest}/jobs", timeout=2) as response:
                    running = [j["id"] for j in json.load(response)["jobs"] if j["status"] == "RUNNING"]
                if running:
                    return SourcePositions(self.settings, running[0], self.topics, rest=rest)
        return None

    def __call__(self) -> dict[tuple[str, int], int]:
        if self.positions is None:
            try:
                self.positions = self._find()
            except (OSError, ValueError, KeyError):
                return {}
        return self.positions.read() if self.positions is not None else {}


def measure(argv: list[str], settings: Settings, event_types: tuple[str, ...], log_path: Path,
            gauges: bool = False) -> dict:
    """Run `argv` (a bounded job) as a child with settings' prefix, database and job name in its
    environment; sample CPU and how far the job has read every second until it exits."""
    from pipelines.stream.job_tables import job_group_id
    from pipelines.stream.kafka import TopicEnds

    env = child_env(settings)
    flink_logs = log_path.parent / f"{log_path.stem}-flink"
    shutil.rmtree(flink_logs, ignore_errors=True)
    env["FLINK_LOG_DIR"] = str(flink_logs)
    services = service_pids(settings)
    topics = [settings.topics.source(t) for t in event_types]
    ends = TopicEnds(settings, job_group_id(settings), topics)
    total = sum(ends.ends.values())
    read_so_far = JobReads(settings, flink_logs, topics) if gauges else dict
    load = os.getloadavg()

    peak_rss = 0

    def sample(child: int | None, began: float) -> Sample:
        nonlocal peak_rss
        peak_rss = max(peak_rss, tree_rss_bytes(read_procs(), [child, *services.values()]))
        read = read_so_far() if child is not None else {}
        return Sample(time.monotonic() - began, total - ends.remaining(read), stack_ticks(services, child))

    samples: list[Sample] = []
    done, status, rusage = 0, 0, None
    began = time.monotonic()
    with log_path.open("w") as log:
        child = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=env["PYTHONPATH"])
        samples.append(Sample(0.0, 0, {**sample(None, began).ticks, **dict.fromkeys(JOB_GROUPS, 0)}))
        try:
            while True:
                done, status, rusage = os.wait4(child.pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() - began > RUN_DEADLINE_S:
                    raise RuntimeError(f"{' '.join(argv)} took longer than {RUN_DEADLINE_S:.0f} s: see {log_path}")
                samples.append(sample(child.pid, began))
                time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - began - samples[-1].seconds)))
        finally:
            if not done:
                child.kill()
                os.wait4(child.pid, 0)
            ends.close()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4 above, not by Popen
    if child.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({child.returncode}): see {log_path}")
    seconds = time.monotonic() - began
    # The job's whole-run CPU from the kernel's account of the child (its reaped JVM included),
    # or from the last sample if the JVM was not reaped through it.
    last = samples[-1]
    exact_job = round((rusage.ru_utime + rusage.ru_stime) * CLK_TCK)
    final = Sample(seconds, total, {**stack_ticks(services, None),
                                    **{g: last.ticks.get(g, 0) for g in JOB_GROUPS}})
    sampled_job = sum(last.ticks.get(g, 0) for g in JOB_GROUPS)
    final.ticks["job_other"] += max(0, exact_job - sampled_job)  # the last second, unsplit
    return {"records": total, "seconds": seconds, "load_average_at_start": load,
            "peak_rss_mib": peak_rss / 2**20,
            "whole_run": {"records_per_s": total / seconds, "us_per_record": us_per_record(samples[0], final, total),
                          "job_cpu_s_rusage": exact_job / CLK_TCK, "job_cpu_s_sampled": sampled_job / CLK_TCK},
            "steady": steady_figures(samples, total),
            "samples": [[round(s.seconds, 2), s.consumed, s.ticks] for s in samples]}


# ---------------------------------------------------------------- the runs


def preload(base: Settings, scale: int) -> Settings:
    from bench.pipeline import isolated, prepare
    from pipelines.reference.generator import generate_night

    settings = isolated(base, secrets.token_hex(3))
    prepare(settings)
    print(f"pre-loading the 1:{scale} night into {settings.topics.prefix}.*", file=sys.stderr)
    started = time.monotonic()
    truth = generate_night(settings, scale=scale, seed=20240812, progress=lambda *_: None)
    print(f"  {truth.deliveries:,} records in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return settings


def drop_database(settings: Settings) -> None:
    """Stop ClickHouse's Kafka consumers of this namespace (they would load the ladder's outputs)."""
    from pipelines.store import migrate
    from pipelines.store.clickhouse import connect

    migrate.drop_database(connect(settings, database="default"), settings.clickhouse.database)


def run_ours(settings: Settings, gauges: bool = False) -> dict:
    ours = replace(settings, job_name="cpu-ours")
    print("ours: viewcount run --bounded", file=sys.stderr)
    result = measure([sys.executable, "-m", "pipelines.cli", "run", "--bounded"], ours, EVENT_TYPES,
                     RESULTS / "cpu-ours.log", gauges)
    return {"what": "ours: python -m pipelines.cli run --bounded (job + ClickHouse consumers + loader)",
            "event_types": list(EVENT_TYPES), **result}


def run_rung(settings: Settings, rung: int, gauges: bool = False) -> dict:
    from bench.ceiling import RUNGS

    print(f"rung {rung}: {RUNGS[rung].name}", file=sys.stderr)
    job = replace(settings, job_name=f"cpu-rung-{rung}")
    result = measure([sys.executable, "-m", "bench.ceiling", "--rung", str(rung)], job, RUNGS[rung].event_types,
                     RESULTS / f"cpu-rung-{rung}.log", gauges)
    return {"what": f"rung {rung}: {RUNGS[rung].name}: {RUNGS[rung].adds}", "name": RUNGS[rung].name,
            "event_types": list(RUNGS[rung].event_types), **result}


def headline(run: dict) -> tuple[float, float, float]:
    """(records/s, stack us/record, job us/record), steady if measured, else the whole run."""
    part = run["steady"] or run["whole_run"]
    return part["records_per_s"], part["us_per_record"]["stack"], part["us_per_record"]["job"]


GROUP_LABELS = {"job_jvm": "job JVM", "job_python": "job Python", "job_other": "job other/reaped",
                "broker": "Kafka broker", "clickhouse": "clickhouse-server", "job": "job total",
                "stack": "stack (job + broker + ClickHouse)", "bench": "bench (sampler, not in stack)"}


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# CPU per record in catch-up, 1:{report['scale']} night", "",
             f"`{report['command']}` ({report['when']}, {report['cpus']} CPUs, load average at start "
             f"{' / '.join(f'{x:.2f}' for x in report['load_average_at_start'])}).", "",
             f"Steady part: from the first 1 s sample at which the job has read (its sources' gauges, or "
             f"its committed offsets) past "
             f"{STEADY[0]:.0%} of its backlog to the first at {STEADY[1]:.0%} or more. Whole run: child start "
             "to exit (start-up, drain and, for ours, ClickHouse's load included).", "",
             "| run | records | steady records/s | steady stack us/rec | steady job us/rec | whole-run s "
             "| whole-run stack us/rec | whole-run job us/rec |", "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        s, w = run["steady"], run["whole_run"]
        steady = (f"{s['records_per_s']:,.0f} | {s['us_per_record']['stack']:.1f} | {s['us_per_record']['job']:.1f}"
                  if s else "- | - | -")
        lines.append(f"| {run['what']} | {run['records']:,} | {steady} | {run['seconds']:.0f} | "
                     f"{w['us_per_record']['stack']:.1f} | {w['us_per_record']['job']:.1f} |")
    lines += ["", "Per process, us of CPU per record (steady / whole run):", "",
              "| process | " + " | ".join(r.get("name", "ours") for r in report["runs"]) + " |",
              "|---|" + "---|" * len(report["runs"])]
    for group, label in GROUP_LABELS.items():
        cells = []
        for run in report["runs"]:
            parts = [part["us_per_record"].get(group) if part else None for part in (run["steady"], run["whole_run"])]
            cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in parts))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Peak resident memory of the stack (the job's tree, the broker, ClickHouse; 1 s samples), MiB: "
              + ", ".join(f"{r.get('name', 'ours')} {r['peak_rss_mib']:,.0f}" for r in report["runs"]
                          if "peak_rss_mib" in r)]
    for failure in report.get("failed", []):
        lines += ["", f"Rung {failure['rung']} failed: {failure['error']}"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=400)
    parser.add_argument("--rungs", type=int, nargs="*", default=[0], help="bench.ceiling rungs to run (0: ceiling)")
    parser.add_argument("--skip-ours", action="store_true", help="only the rungs (the ladder)")
    parser.add_argument("--name", default="cpu", help="bench/results/<name>.{md,json}")
    parser.add_argument("--progress", choices=("gauges", "commits"), default="commits",
                        help="how far the job has read: its sources' gauges (REST, each second) or only its "
                             "committed offsets (every checkpoint; no REST calls into the measured JVM)")
    parser.add_argument("--rereport", action="store_true",
                        help="no runs: recompute bench/results/<name>.{md,json} from the samples saved there")
    parser.add_argument("--live", type=int, nargs="*", default=[],
                        help="then the live pipeline under the night's shape at these offered loads, events/s "
                             "(e.g. 40000 60000 80000): bench.live, into bench/results/<name>-live.{md,json}")
    parser.add_argument("--live-warmup", type=float, default=60.0, help="seconds at each load before measuring")
    parser.add_argument("--live-period", type=float, default=300.0, help="seconds measured at each load")
    args = parser.parse_args(argv)
    if args.rereport:
        return rereport(args.name)
    from bench.pipeline import drop

    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    base = Settings.from_env()
    settings = preload(base, args.scale)
    runs, failed = [], []
    try:
        if not args.skip_ours:
            runs.append(run_ours(settings, args.progress == "gauges"))
        drop_database(settings)
        for rung in args.rungs:
            try:
                runs.append(run_rung(settings, rung, args.progress == "gauges"))
            except RuntimeError as exc:  # a rung that fails says why; the ladder goes on
                print(f"rung {rung} failed: {exc}", file=sys.stderr)
                failed.append({"rung": rung, "error": str(exc)})
    finally:
        drop(settings)
        shutil.rmtree(settings.state_dir / "flink" / settings.topics.prefix, ignore_errors=True)
    report = {
        "command": (f".venv/bin/python -m bench.cpu --scale {args.scale} "
                    f"--rungs {' '.join(map(str, args.rungs))}{' --skip-ours' if args.skip_ours else ''} "
                    f"--progress {args.progress} --name {args.name}"),
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "clk_tck": CLK_TCK, "scale": args.scale, "load_average_at_start": load,
        "runs": runs, "failed": failed,
    }
    publish(report, args.name)
    if args.live:
        from bench import live

        live.main(["--rates", *map(str, args.live), "--warmup", f"{args.live_warmup:g}",
                   "--period", f"{args.live_period:g}", "--name", f"{args.name}-live"])
    return 0


def rereport(name: str) -> int:
    """The steady figures again from a report's saved samples (after a change of the cut)."""
    report = json.loads((RESULTS / f"{name}.json").read_text())
    for run in report["runs"]:
        samples = [Sample(t, n, ticks) for t, n, ticks in run["samples"]]
        run["steady"] = steady_figures(samples, run["records"])
    report["steady_cut"] = list(STEADY)
    return publish(report, name)


def publish(report: dict, name: str) -> int:
    report["steady_cut"] = list(STEADY)
    runs = report["runs"]
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, RESULTS / f"{name}.md")
    print((RESULTS / f"{name}.md").read_text())
    ours = next((r for r in runs if r["what"].startswith("ours")), None)
    if ours is not None:
        rate, stack_us, job_us = headline(ours)
        ceiling = next((r for r in runs if r.get("name") == "ceiling"), None)
        if ceiling is not None:
            c_rate, c_stack, c_job = headline(ceiling)
            what = "steady" if ceiling["steady"] else "whole run"
            print(f"ceiling: {c_rate:,.0f} records/s {what}, stack {c_stack:.1f} µs/record, job {c_job:.1f} µs/record")
        # The headline; if the run had no steady part, these are its whole-run figures.
        print(f"catch-up: {rate:,.0f} records/s steady, stack {stack_us:.1f} µs/record, job {job_us:.1f} µs/record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
