"""Soak: the live pipeline under a fixed offered load for minutes; lag bounded, memory flat.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 10000] [--sample-s 5]

Offers the reference night with `viewcount generate --rate` (default: half the end-to-end
sustained rate of docs/performance.md) to a live `viewcount run`, in a topic prefix and database
of its own on the configured stack, and samples every --sample-s seconds:
- lag: source records not yet consumed by the job's group, and job output not yet loaded by
  ClickHouse's Kafka consumers and the loader (committed offsets against the topics' ends);
- RSS of every process: the generator, the pipeline's Python process and its JVM, the Kafka
  broker and ClickHouse (found by the ports they listen on).
Reports each RSS's slope in MiB per minute (least squares after the first minute's warm-up) and
the lag's max and slope; writes bench/results/soak.{json,md}. Ratios, not asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import EVENT_TYPES, REPO_ROOT, Settings, Topics
from pipelines.store.migrate import drop_database

RESULTS = Path(__file__).parent / "results"
# docs/performance.md, "The live pipeline at fixed offered loads": the highest offered rate the
# live pipeline kept up with on 2 cores (it fell behind at 30,000/s), events/s.
SUSTAINED_RATE = 20_000
WARM_UP_S = 60


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the pipeline's JVM is a child of its Python process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def listening_pid(port: int) -> int | None:
    """The process listening on a loopback TCP port (how the services are found, whoever started
    them: their pid files live in the state folder of whoever ran `make up`)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(fd.parent.parent.name)
    return None


def command_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = b" ".join(argv).decode(errors="replace")
    for marker, name in (("PythonGatewayServer", "pipeline JVM (Flink)"), ("pipelines.cli run", "pipeline (loader)"),
                         ("pipelines.cli generate", "generator"), ("kafka.Kafka", "kafka"),
                         ("clickhouse", "clickhouse"), ("beam_boot", "python worker")):
        if marker in text:
            return name
    return Path(argv[0].decode(errors="replace")).name


def lags(settings: Settings, consumer) -> tuple[int, int]:
    """(records the job has not consumed, job output not yet loaded into ClickHouse)."""
    from confluent_kafka import Consumer, TopicPartition

    from pipelines.stream.job_tables import job_group_id

    def behind(group: str, topics: list[str]) -> int:
        partitions = [TopicPartition(t, p) for t in topics for p in range(settings.topic_partitions)]
        probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                          "enable.auto.commit": False})
        try:
            committed = probe.committed(partitions, timeout=10)
        finally:
            probe.close()
        total = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            total += max(high - max(tp.offset, 0), 0)
        return total

    from pipelines.store.tables import OUTPUTS
    from pipelines.stream import streams

    topics = settings.topics
    # Each output is loaded by its own reader: ClickHouse's Kafka consumer group, or the loader's.
    loaded = sum(behind(streams.group_id(settings, o) if o.clickhouse_loads else f"{topics.prefix}.loader",
                        [getattr(topics, o.topic)]) for o in OUTPUTS)
    return behind(job_group_id(settings), [topics.source(t) for t in EVENT_TYPES]), loaded


def produced(settings: Settings, consumer) -> int:
    """Records in the source topics so far."""
    from confluent_kafka import TopicPartition

    return sum(consumer.get_watermark_offsets(TopicPartition(settings.topics.source(t), p), timeout=10)[1]
               for t in EVENT_TYPES for p in range(settings.topic_partitions))


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) pairs, per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var if var else 0.0


def scale_for(rate: float, seconds: float) -> int:
    """The largest 1:N night (fewest events) that still lasts `seconds` at `rate`."""
    from pipelines.reference.night import PUBLISHED_RELATED_VIEWS, PUBLISHED_SUBJECT_VIEWS

    # Views are most of a night's deliveries; leave a fifth of margin for the rest.
    return max(1, int((PUBLISHED_SUBJECT_VIEWS + PUBLISHED_RELATED_VIEWS) * 1.2 / (rate * seconds)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=SUSTAINED_RATE / 2, help="offered events/s")
    parser.add_argument("--sample-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    from confluent_kafka import Consumer

    from pipelines.stack.kafka_broker import create_topics
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations

    base = Settings.from_env()
    tag = secrets.token_hex(3)
    target = base.clickhouse
    # Topics keep their records: the night is stamped 2024, a time retention would delete it.
    settings = replace(base, topics=Topics(prefix=f"soak{tag}"), topic_retention_ms=-1,
                       clickhouse_url=target.url(f"soak_{tag}"))
    create_topics(settings)
    admin = connect(settings, database="default")
    apply_migrations(admin, settings.clickhouse.database)
    env = {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
           "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url}
    seconds = args.minutes * 60
    scale = scale_for(args.rate, seconds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = {name: (RESULTS / f"soak-{name}.log").open("wb") for name in ("pipeline", "generator")}
    pipeline = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run"], env=env, cwd=REPO_ROOT,
                                stdout=logs["pipeline"], stderr=subprocess.STDOUT, start_new_session=True)
    generator = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "generate", "--scale", str(scale), "--rate", str(args.rate)],
        env=env, cwd=REPO_ROOT, stdout=logs["generator"], stderr=subprocess.STDOUT, start_new_session=True)
    services = {"kafka": listening_pid(int(settings.kafka_bootstrap.rsplit(":", 1)[1])),
                "clickhouse": listening_pid(settings.clickhouse.port)}
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"soak{tag}.probe"})
    started = time.monotonic()
    samples: list[dict] = []
    print(f"soak: {args.minutes:g} min at {args.rate:,.0f} events/s (night at 1:{scale}), "
          f"prefix {settings.topics.prefix}; sampling every {args.sample_s:g} s", flush=True)
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if pipeline.poll() is not None:
                raise RuntimeError(f"the pipeline exited with {pipeline.returncode}: see {logs['pipeline'].name}")
            pids = {pid: command_name(pid) for pid in descendants(pipeline.pid) + descendants(generator.pid)}
            pids.update({pid: name for name, pid in services.items() if pid})
            rss: dict[str, float] = {}
            for pid, name in pids.items():
                if (value := rss_mib(pid)) is not None:
                    rss[name] = rss.get(name, 0.0) + value
            job_lag, loader_lag = lags(settings, consumer)
            samples.append({"t": round(elapsed, 1), "job_lag": job_lag, "loader_lag": loader_lag, "rss_mib": rss,
                            "produced": produced(settings, consumer)})
            print(f"{elapsed:6.0f} s  job lag {job_lag:>9,}  loader lag {loader_lag:>9,}  "
                  + "  ".join(f"{k} {v:,.0f} MiB" for k, v in sorted(rss.items())), flush=True)
            time.sleep(args.sample_s)  # the sampling period, not a synchronisation
    finally:
        for process in (generator, pipeline):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in (generator, pipeline):
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        consumer.close()
        drop_database(admin, settings.clickhouse.database)
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).delete_topics(settings.topics.all())
    report = summarise(samples, args, scale)
    (RESULTS / "soak.json").write_text(json.dumps({"summary": report, "samples": samples}, indent=1))
    (RESULTS / "soak.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def summarise(samples: list[dict], args, scale: int) -> dict:
    steady = [s for s in samples if s["t"] >= min(WARM_UP_S, samples[-1]["t"] / 2)] if samples else []
    names = sorted({name for s in samples for name in s["rss_mib"]})
    offered = ((samples[-1]["produced"] - samples[0]["produced"]) / (samples[-1]["t"] - samples[0]["t"])
               if len(samples) > 1 and samples[-1]["t"] > samples[0]["t"] else 0.0)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "minutes": args.minutes, "rate": args.rate,
        "scale": scale, "samples": len(samples), "offered_rate_measured": round(offered),
        "job_lag_max": max((s["job_lag"] for s in samples), default=0),
        "job_lag_last": samples[-1]["job_lag"] if samples else 0,
        "job_lag_slope_per_min": round(slope_per_minute([(s["t"], s["job_lag"]) for s in steady])),
        "loader_lag_max": max((s["loader_lag"] for s in samples), default=0),
        "loader_lag_slope_per_min": round(slope_per_minute([(s["t"], s["loader_lag"]) for s in steady])),
        "rss": {name: {
            "first_mib": round(next(s["rss_mib"][name] for s in steady if name in s["rss_mib"]), 1),
            "last_mib": round(next(s["rss_mib"][name] for s in reversed(steady) if name in s["rss_mib"]), 1),
            "slope_mib_per_min": round(slope_per_minute(
                [(s["t"], s["rss_mib"][name]) for s in steady if name in s["rss_mib"]]), 2),
        } for name in names if any(name in s["rss_mib"] for s in steady)},
    }


def markdown(report: dict) -> str:
    lines = [f"# Soak: {report['minutes']:g} min at {report['rate']:,.0f} events/s offered "
             f"(measured {report['offered_rate_measured']:,}/s), {report['when']}", "",
             f"- job lag (source records not consumed): max {report['job_lag_max']:,}, last "
             f"{report['job_lag_last']:,}, slope {report['job_lag_slope_per_min']:,}/min",
             f"- loader lag (job output not loaded): max {report['loader_lag_max']:,}, slope "
             f"{report['loader_lag_slope_per_min']:,}/min", "",
             "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | slope (MiB/min) |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['first_mib']:,} | {r['last_mib']:,} | {r['slope_mib_per_min']:+} |"
              for name, r in report["rss"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
