"""Benchmark: the live pipeline under the reference night's shape at fixed offered loads (issue 18).

    .venv/bin/python -m bench.live --rates 40000 60000 80000 [--warmup 60] [--period 300] [--scale 100]
    .venv/bin/python -m bench.live --outage 600 --rates 20000 [--warmup 60]

The load is the reference night at 1:`scale` (its posts, surfaces, impressions, presence, in
arrival order; pipelines.reference.night_events), each event dated when it is sent, so the windows
fill at the offered rate as they would live; when the night runs out it starts again with event ids
of its own (no replay is a duplicate). It is sent from this process to the four source topics of a
namespace of the run's own, while the live pipeline (`python -m pipelines.cli run`) runs as a child.

Per rate, after a warm-up: the rate sent and the rate the job committed (its consumer group's
offsets, committed on every checkpoint), CPU per committed record of the job's tree, the broker and
clickhouse-server (bench.proc_cpu), the lag (records sent and not yet committed) every
LAG_EVERY_S, whether it stayed flat (its peak over the period's last minute at most one checkpoint
interval's records above its peak over the first, and the rate offered actually sent: the
producer shares the box), and when each closed minute of the tracked
subject first showed views in `subject_rollup` (what the dashboards read), after the minute's end.

`--outage S`: at the first rate, the pipeline is stopped (SIGTERM, as a service manager stops it)
for S seconds while the load goes on, then started again: how long until the lag is back where it
was before the outage (the job's start-up included).

Writes bench/results/<name>.{md,json}; the last line printed is the headline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from bench.cpu import RESULTS, child_env, service_pids, stack_ticks
from bench.pipeline import drop, isolated, prepare
from bench.proc_cpu import Sample, read_procs, tree_rss_bytes, us_per_record
from pipelines.config import EVENT_TYPES, Settings
from pipelines.reference.producer import send
from pipelines.stack.services import stop_group

LAG_EVERY_S = 5.0
# The job's start (planning, code generation, JIT) under a light load, before the first rate.
START_LOAD = (5_000, 60.0)
# The lag's peak is compared over this much of the period's start and of its end.
LAG_WINDOW_S = 60.0
# The share of the offered rate the bench must send for the rate to count as kept up with.
SENT_SHARE = 0.98


class NightLoad:
    """The reference night's events at 1:scale, in arrival order, endlessly, each dated when sent."""

    def __init__(self, settings: Settings, scale: int, seed: int = 20240812):
        from pipelines.reference.night import build_night

        self.night = build_night(scale, seed)
        self.topics = {event_type: settings.topics.source(event_type) for event_type in EVENT_TYPES}
        self._events = self._cycle()

    def _cycle(self):
        from pipelines.reference.night_events import night_events

        for lap in itertools.count():
            for _, event_type, event in night_events(self.night):
                if lap:
                    event["event_id"] = f"{event['event_id']}~{lap}"
                yield event_type, event

    def next_record(self, now_ms: int) -> tuple[str, bytes, bytes]:
        """(topic, value, key) of the next event, dated now_ms."""
        import orjson

        from pipelines.reference.producer import record_key

        event_type, event = next(self._events)
        event["event_time"] = now_ms
        return self.topics[event_type], orjson.dumps(event), record_key(event_type, event)


@dataclass
class LagSample:
    seconds: float
    sent: int
    committed: int

    @property
    def lag(self) -> int:
        return self.sent - self.committed


@dataclass
class LiveRun:
    """The pipeline as a child under an offered load; the bench's producer and its measurements."""

    settings: Settings
    load: NightLoad
    sent: int = 0
    child: subprocess.Popen | None = None
    subject_minutes_seen: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0  # bytes, the stack's (the pipeline's tree and the services), at the lag's samples

    def __post_init__(self):
        from confluent_kafka import Producer

        from pipelines.store.clickhouse import connect
        from pipelines.stream.job_tables import job_group_id
        from pipelines.stream.kafka import CommittedOffsets

        self.services = service_pids(self.settings)
        self.offsets = CommittedOffsets(self.settings, job_group_id(self.settings))
        self.producer = Producer({"bootstrap.servers": self.settings.kafka_bootstrap, "linger.ms": 5,
                                  "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
        self.client = connect(self.settings)
        self.log = (RESULTS / f"live-{self.settings.topics.prefix}.log").open("a")

    def start(self) -> None:
        env = child_env(self.settings)
        self.child = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run"], env=env, cwd=env["PYTHONPATH"],
                                      stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout_s: float = 120.0) -> None:
        """SIGTERM to the runner alone (to its group it would also reach PyFlink's JVM, which then
        exits before the job is cancelled), as a service manager stops it."""
        if self.child is None:
            return
        if self.child.poll() is not None:
            self.child = None
            return
        os.kill(self.child.pid, signal.SIGTERM)
        try:
            self.child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(self.child, 0)
        self.child = None  # an outage: offer() goes on without it

    def committed(self) -> int:
        partitions = range(self.settings.topic_partitions)
        return sum(max(offset, 0) for topic in self.load.topics.values()
                   for offset in self.offsets.committed(topic, partitions).values())

    def cpu_sample(self) -> Sample:
        return Sample(0.0, self.committed(), stack_ticks(self.services, self.child.pid if self.child else None))

    def offer(self, rate: int, seconds: float) -> tuple[float, list[LagSample]]:
        """Send `rate` events/s for `seconds`; the rate sent and the lag every LAG_EVERY_S."""
        began, first = time.monotonic(), self.sent
        next_lag = next_subject = began
        lags: list[LagSample] = []
        while (now := time.monotonic()) - began < seconds:
            if self.child is not None and self.child.poll() is not None:
                raise RuntimeError(f"the live pipeline stopped ({self.child.returncode}): see {self.log.name}")
            now_ms = int(time.time() * 1000)
            for _ in range(int(rate * (now - began)) - (self.sent - first)):
                send(self.producer, *self.load.next_record(now_ms))
                self.sent += 1
            self.producer.poll(0)
            if now >= next_lag:
                next_lag += LAG_EVERY_S
                lags.append(LagSample(now - began, self.sent, self.committed()))
                self.peak_rss = max(self.peak_rss, tree_rss_bytes(
                    read_procs(), [self.child.pid if self.child else None, *self.services.values()]))
            if now >= next_subject:
                next_subject += 1.0
                self._see_subject_minutes()
            time.sleep(0.002)
        return (self.sent - first) / (time.monotonic() - began), lags

    def _see_subject_minutes(self) -> None:
        """The tracked subject's minutes that show views in what the dashboards read, first seen when."""
        if self.child is None:
            return
        for (start,) in self.client.execute(
                "SELECT DISTINCT toUInt32(window_start) FROM subject_rollup WHERE grain = 'minute' "
                "AND subject_views > 0 AND window_start >= now() - 900"):
            self.subject_minutes_seen.setdefault(start, time.time())

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.producer.flush(30)
            self.offsets.close()
            self.log.close()


def flat(lags: list[LagSample], rate: float, checkpoint_s: float) -> tuple[bool, int]:
    """Whether the lag stayed flat over the period, and how much its peak grew: the peak over the
    last LAG_WINDOW_S against the peak over the first (the committed offsets move once a checkpoint,
    so the lag saws by up to a checkpoint interval's records); flat when it grew less than that."""
    first = max(s.lag for s in lags if s.seconds <= LAG_WINDOW_S)
    last = max(s.lag for s in lags if s.seconds >= lags[-1].seconds - LAG_WINDOW_S)
    return last - first <= rate * checkpoint_s, last - first


def measure_rate(run: LiveRun, rate: int, warmup_s: float, period_s: float) -> dict:
    print(f"live: {rate:,} events/s", file=sys.stderr)
    run.offer(rate, warmup_s)
    load = os.getloadavg()
    run.peak_rss = 0
    start = run.cpu_sample()
    started = time.time()
    sent_per_s, lags = run.offer(rate, period_s)
    end = run.cpu_sample()
    end.seconds = time.time() - started
    is_flat, growth = flat(lags, sent_per_s, run.settings.checkpoint_interval_ms / 1000)
    # A rate this process could not send is not a rate the pipeline kept up with.
    is_flat = is_flat and sent_per_s >= SENT_SHARE * rate
    delays = sorted(seen - (minute + 60) for minute, seen in run.subject_minutes_seen.items()
                    if started <= minute + 60 and minute + 60 <= started + period_s)
    return {"offered_per_s": rate, "sent_per_s": sent_per_s, "period_s": end.seconds,
            "committed_per_s": (end.consumed - start.consumed) / end.seconds, "load_average_at_start": load,
            "us_per_record": us_per_record(start, end) if end.consumed > start.consumed else None,
            "lag_flat": is_flat, "lag_peak_growth": growth,
            "lags": [[s.seconds, s.sent, s.committed] for s in lags],
            "subject_minute_delays_s": delays, "peak_rss_mib": run.peak_rss / 2**20}


def measure_outage(run: LiveRun, rate: int, outage_s: float, warmup_s: float, deadline_s: float = 1800.0) -> dict:
    """Stop the pipeline for outage_s under `rate`, start it again: seconds until the lag is back."""
    print(f"live: {rate:,} events/s, then the pipeline stopped for {outage_s:.0f} s", file=sys.stderr)
    _, before = run.offer(rate, warmup_s)
    checkpoint_s = run.settings.checkpoint_interval_ms / 1000
    normal = max(s.lag for s in before if s.seconds >= before[-1].seconds - LAG_WINDOW_S) + rate * checkpoint_s
    run.stop()
    run.offer(rate, outage_s)
    backlog = run.sent - run.committed()
    restarted = time.monotonic()
    run.start()
    drained_after = None
    lags: list[LagSample] = []
    while drained_after is None and time.monotonic() - restarted < deadline_s:
        run.offer(rate, LAG_EVERY_S)
        lags.append(LagSample(time.monotonic() - restarted, run.sent, run.committed()))
        if lags[-1].lag <= normal:
            drained_after = lags[-1].seconds
    return {"offered_per_s": rate, "outage_s": outage_s, "backlog_at_restart": backlog, "lag_before": normal,
            "drained_after_s": drained_after, "lags": [[s.seconds, s.sent, s.committed] for s in lags]}


def write_markdown(report: dict, path) -> None:
    lines = [f"# The live pipeline under the night's shape (1:{report['scale']})", "",
             f"`{report['command']}` ({report['when']}, {report['cpus']} CPUs).", ""]
    if report["rates"]:
        lines += ["| offered/s | sent/s | committed/s | lag flat | lag peak growth | stack us/rec | job us/rec | JVM "
                  "| job Python | broker | ClickHouse | subject minute on the dashboards, s after its end "
                  "(min / median / max) | peak stack RSS, MiB | load avg at start |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["rates"]:
            u = r["us_per_record"] or {}
            cells = " | ".join(f"{u[g]:.1f}" if g in u else "-"
                               for g in ("stack", "job", "job_jvm", "job_python", "broker", "clickhouse"))
            d = r["subject_minute_delays_s"]
            delay = f"{d[0]:.1f} / {d[len(d) // 2]:.1f} / {d[-1]:.1f} ({len(d)} minutes)" if d else "-"
            lines.append(f"| {r['offered_per_s']:,} | {r['sent_per_s']:,.0f} | {r['committed_per_s']:,.0f} | "
                         f"{'yes' if r['lag_flat'] else 'no'} | {r['lag_peak_growth']:,} | {cells} | {delay} | "
                         f"{r.get('peak_rss_mib', 0):,.0f} | {r['load_average_at_start'][0]:.2f} |")
    if report.get("outage"):
        o = report["outage"]
        drained = "not within the deadline" if o["drained_after_s"] is None else f"{o['drained_after_s']:.0f} s"
        lines += ["", f"Outage: {o['outage_s']:.0f} s without the pipeline at {o['offered_per_s']:,} events/s, "
                  f"{o['backlog_at_restart']:,} records behind at the restart; lag back under "
                  f"{o['lag_before']:,.0f} after {drained} (start-up included)."]
    path.write_text("\n".join(lines) + "\n")


def headline(report: dict) -> str:
    parts = []
    if report["rates"]:
        kept = [r["offered_per_s"] for r in report["rates"] if r["lag_flat"]]
        parts.append(f"highest rate with the lag flat: {max(kept):,}/s" if kept else "the lag grew at every rate")
    if report.get("outage"):
        after = report["outage"]["drained_after_s"]
        parts.append("outage not drained" if after is None else f"outage drained in {after:.0f} s")
    return "live: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[40_000, 60_000, 80_000], help="events/s offered")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds at each rate before measuring")
    parser.add_argument("--period", type=float, default=300.0, help="seconds measured at each rate")
    parser.add_argument("--scale", type=int, default=100, help="the night at 1:scale (it repeats when it runs out)")
    parser.add_argument("--outage", type=float, default=0.0,
                        help="instead of the rates' periods: stop the pipeline this long at the first rate")
    parser.add_argument("--name", default="live", help="bench/results/<name>.{md,json}")
    args = parser.parse_args(argv)
    if args.period < 2 * LAG_WINDOW_S:
        parser.error(f"--period must be at least {2 * LAG_WINDOW_S:.0f} s (the lag is compared over its first "
                     f"and last {LAG_WINDOW_S:.0f} s)")
    RESULTS.mkdir(exist_ok=True)
    settings = replace(isolated(Settings.from_env(), secrets.token_hex(3)), job_name="live")
    prepare(settings)
    run = LiveRun(settings, NightLoad(settings, args.scale))
    report = {"command": "", "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
              "cpus": os.cpu_count(), "scale": args.scale, "rates": [], "outage": None}
    report["command"] = ".venv/bin/python -m bench.live " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        run.start()
        print(f"live: starting under {START_LOAD[0]:,} events/s for {START_LOAD[1]:.0f} s", file=sys.stderr)
        run.offer(*START_LOAD)
        if args.outage:
            report["outage"] = measure_outage(run, args.rates[0], args.outage, args.warmup)
        else:
            for rate in args.rates:
                report["rates"].append(measure_rate(run, rate, args.warmup, args.period))
    finally:
        run.close()
        drop(settings)
        shutil.rmtree(settings.state_dir / "flink" / settings.topics.prefix, ignore_errors=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    print(headline(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
