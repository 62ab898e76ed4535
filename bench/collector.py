"""Benchmark: events/s through the HTTP collector, and request latency at a fixed offered load,
side by side with the raw Kafka produce limit measured in the same run on the same machine.

    .venv/bin/python -m bench.collector [--seconds 8] [--workers 2] [--clients 2x8]

1. Kafka alone: one confluent-kafka producer (idempotent, acks=all, as the collector's) sending
   ready view records as fast as it can: the ceiling for anything in front of Kafka here.
2. The collector (`viewcount collect`, --workers processes) under closed-loop load from client
   processes (pre-built bodies, keep-alive), batches of 50 and of 500: events/s acknowledged.
3. A fixed offered load of 10,000 events/s (open loop: requests leave on a schedule, latency is
   counted from the scheduled moment, so a stalled server cannot hide its queue): p50 / p99.

Clients and server share the machine's cores, as they would not in production: the ratios
matter more than the absolute figures. Writes bench/results/collector.{json,md}. Needs Kafka (make up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import secrets
import statistics
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson

from pipelines.config import Settings, Topics
from pipelines.reference.producer import send

RESULTS = Path(__file__).parent / "results"
KEY = "bench-key-0123456789abcdef"
OFFERED_RATE = 10_000


def view(n: int, now_ms: int) -> dict:
    return {"event_id": f"bench-{n:x}", "event_time": now_ms, "post_id": 1 + n % 5000, "author_id": 7,
            "viewer_id": 2 + n % 100_000, "surface": "home", "client": "web"}


def bodies(batch: int, count: int, seed: int) -> list[bytes]:
    from pipelines.ingest.collector_client import envelope

    now = time.time_ns() // 1_000_000
    return [orjson.dumps([envelope("view", view(seed * 10_000_000 + b * batch + i, now)) for i in range(batch)])
            for b in range(count)]


def kafka_limit(settings: Settings, records: int) -> float:
    """Events/s of one producer configured as the collector's, on ready records."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    now = time.time_ns() // 1_000_000
    ready = [(str(1 + n % 5000).encode(), orjson.dumps(view(n, now))) for n in range(records)]
    topic = settings.topics.source("view")
    started = time.perf_counter()
    for key, value in ready:
        send(producer, topic, value, key)
    assert producer.flush(60) == 0, "Kafka did not take every record"
    return records / (time.perf_counter() - started)


def _closed_loop(url: str, batch: int, threads: int, seconds: float, seed: int, out) -> None:
    """One client process: `threads` keep-alive connections sending as fast as answers come."""
    from pipelines.ingest.collector_client import CollectorClient

    pool = bodies(batch, 20, seed)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop(n: int) -> None:
        client = CollectorClient(url, KEY)
        mine = []
        i = n
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            reply = client.post(pool[i % len(pool)])
            mine.append((reply.status, time.perf_counter() - started))
            i += 1
        client.close()
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(results)


def closed_loop(url: str, batch: int, processes: int, threads: int, seconds: float) -> dict:
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_closed_loop, args=(url, batch, threads, seconds, p, queue))
             for p in range(processes)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [r for _ in procs for r in queue.get()]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    ok = [latency for status, latency in results if status == 200]
    return {"batch": batch, "events_per_s": len(ok) * batch / elapsed, "requests": len(results),
            "non_2xx": len(results) - len(ok), **percentiles(ok)}


def _open_loop(url: str, batch: int, rate: float, seconds: float, threads: int, out) -> None:
    """Requests leave at fixed moments (rate/batch per second); latency from the scheduled moment."""
    from pipelines.ingest.collector_client import CollectorClient

    pool = bodies(batch, 20, 99)
    interval = batch / rate
    total = int(seconds / interval)
    start = time.perf_counter() + 0.2
    next_slot = [0]
    lock = threading.Lock()
    results: list[tuple[int, float]] = []

    def loop() -> None:
        client = CollectorClient(url, KEY)
        while True:
            with lock:
                slot = next_slot[0]
                next_slot[0] += 1
            if slot >= total:
                break
            due = start + slot * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the schedule of the offered load, not synchronisation
            reply = client.post(pool[slot % len(pool)])
            with lock:
                results.append((reply.status, time.perf_counter() - due))
        client.close()

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(results)


def open_loop(url: str, batch: int, rate: float, seconds: float) -> dict:
    queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_open_loop, args=(url, batch, rate, seconds, 16, queue))
    proc.start()
    results = queue.get()
    proc.join()
    ok = [latency for status, latency in results if status == 200]
    return {"batch": batch, "offered_events_per_s": rate, "requests": len(results),
            "non_2xx": len(results) - len(ok), **percentiles(ok)}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None}
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka.admin import AdminClient

    from pipelines.ingest.collector_process import CollectorProcess
    from pipelines.stack.kafka_broker import create_topics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    parser.add_argument("--workers", type=int, default=2, help="collector worker processes")
    parser.add_argument("--clients", default="2x8", help="client processes x keep-alive connections each")
    parser.add_argument("--kafka-records", type=int, default=300_000)
    args = parser.parse_args(argv)
    processes, threads = (int(x) for x in args.clients.split("x"))

    base = Settings.from_env()
    settings = replace(base, topics=Topics(prefix=f"benchcoll{secrets.token_hex(3)}"))
    create_topics(settings)
    report: dict = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
                    "cores": multiprocessing.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                    "workers": args.workers, "clients": args.clients,
                    "seconds_per_phase": args.seconds}
    try:
        report["kafka_produce_events_per_s"] = kafka_limit(settings, args.kafka_records)
        print(f"Kafka produce limit (one idempotent producer, acks=all): "
              f"{report['kafka_produce_events_per_s']:,.0f} events/s", flush=True)
        with CollectorProcess(settings, {"bench": KEY}, workers=args.workers) as collector:
            closed_loop(collector.url, 500, 1, 2, 1.0)  # warm-up: connections, producer ids, leaders
            report["throughput"] = []
            for batch in (50, 500):
                row = closed_loop(collector.url, batch, processes, threads, args.seconds)
                row["ratio_to_kafka"] = row["events_per_s"] / report["kafka_produce_events_per_s"]
                report["throughput"].append(row)
                print(f"collector, batches of {batch}: {row['events_per_s']:,.0f} events/s "
                      f"({row['ratio_to_kafka']:.2f} of Kafka's limit), p50 {row['p50_ms']:.1f} ms, "
                      f"p99 {row['p99_ms']:.1f} ms, {row['non_2xx']} non-2xx", flush=True)
            report["fixed_load"] = []
            for batch in (50, 500):
                row = open_loop(collector.url, batch, OFFERED_RATE, args.seconds)
                report["fixed_load"].append(row)
                print(f"collector at {OFFERED_RATE:,} events/s offered, batches of {batch}: "
                      f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['non_2xx']} non-2xx",
                      flush=True)
    finally:
        deleting = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).delete_topics(
            settings.topics.all(), operation_timeout=30)
        for future in deleting.values():  # wait: the process may end before the admin client sends it
            with contextlib.suppress(Exception):
                future.result()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collector.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Collector benchmark ({report['when']}, {report['cores']} cores, load average "
             f"{report['load_average_at_start']:.1f} at start, {args.workers} workers, clients {args.clients}, "
             f"{args.seconds:g} s per phase)", "",
             "| what | events/s | ratio to Kafka | p50 ms | p99 ms | non-2xx |", "|---|---|---|---|---|---|",
             f"| Kafka produce limit | {report['kafka_produce_events_per_s']:,.0f} | 1.00 | | | |"]
    for row in report["throughput"]:
        lines.append(f"| collector, batches of {row['batch']} | {row['events_per_s']:,.0f} | "
                     f"{row['ratio_to_kafka']:.2f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['non_2xx']} |")
    for row in report["fixed_load"]:
        lines.append(f"| {OFFERED_RATE:,} events/s offered, batches of {row['batch']} | | | "
                     f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['non_2xx']} |")
    (RESULTS / "collector.md").write_text("\n".join(lines) + "\n")
    print(f"written {RESULTS / 'collector.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
