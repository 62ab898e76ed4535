"""The collector's metrics: counters and the Kafka delivery histogram, summed over its worker processes."""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path

import orjson

DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and one histogram, in Prometheus text format; summed over the worker processes
    through small snapshot files (each worker writes its own about once a second)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.delivery = [0] * (len(DELIVERY_BUCKETS) + 1)
        self.delivery_sum = 0.0
        self.lock = threading.Lock()

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def observe_delivery(self, seconds: float) -> None:
        # Called from the producer's poll thread only.
        self.delivery[bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.delivery_sum += seconds

    def snapshot(self) -> dict:
        with self.lock:
            counters = [[name, list(labels), value] for (name, labels), value in self.counters.items()]
        return {"counters": counters, "delivery": list(self.delivery), "delivery_sum": self.delivery_sum}

    def write_snapshot(self) -> None:
        if self.folder is None:
            return
        path = self.folder / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def merged(self) -> dict:
        snapshots = {os.getpid(): self.snapshot()}
        if self.folder is not None:
            for path in self.folder.glob("*.json"):
                pid = int(path.stem)
                if pid not in snapshots:
                    try:
                        snapshots[pid] = orjson.loads(path.read_bytes())
                    except (OSError, orjson.JSONDecodeError):
                        continue
        counters: dict[tuple, float] = {}
        delivery = [0] * (len(DELIVERY_BUCKETS) + 1)
        delivery_sum = 0.0
        for snap in snapshots.values():
            for name, labels, value in snap["counters"]:
                key = (name, tuple(tuple(pair) for pair in labels))
                counters[key] = counters.get(key, 0) + value
            delivery = [a + b for a, b in zip(delivery, snap["delivery"], strict=True)]
            delivery_sum += snap["delivery_sum"]
        return {"counters": counters, "delivery": delivery, "delivery_sum": delivery_sum,
                "workers": len(snapshots)}

    def text(self, queued: int) -> str:
        merged = self.merged()
        helps = {
            "viewcount_collector_requests_total": "HTTP requests to the collector, by path and status code.",
            "viewcount_collector_events_accepted_total": "Events acknowledged by Kafka on their source topic.",
            "viewcount_collector_events_rejected_total": "Events sent to the dead-letter topic, by reason.",
            "viewcount_collector_rate_limited_requests_total": "Requests answered 429 (rate limit), by key name.",
            "viewcount_collector_rate_limited_events_total": "Events of the requests answered 429, by key name.",
        }
        lines = []
        for name, text in helps.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            for (metric, labels), value in sorted(merged["counters"].items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        name = "viewcount_collector_kafka_delivery_seconds"
        lines += [f"# HELP {name} From handing an event to the producer to Kafka's acknowledgement.",
                  f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip((*DELIVERY_BUCKETS, "+Inf"), merged["delivery"], strict=True):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines += [f"{name}_sum {merged['delivery_sum']:.6f}", f"{name}_count {running}"]
        lines += ["# HELP viewcount_collector_kafka_queued_events Events waiting for Kafka in this worker.",
                  "# TYPE viewcount_collector_kafka_queued_events gauge",
                  f"viewcount_collector_kafka_queued_events {queued}",
                  "# HELP viewcount_collector_workers Worker processes whose counters are summed here.",
                  "# TYPE viewcount_collector_workers gauge",
                  f"viewcount_collector_workers {merged['workers']}"]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"
