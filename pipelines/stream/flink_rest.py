"""What a running Flink job has read, from its REST API: the Kafka source's `currentOffset` gauges.

A bounded run ends once the job has read its source topics up to their ends at start. The Kafka
source commits its offsets to the consumer group on every checkpoint, but the commit is a task of
the connector's fetcher thread, queued behind its poll of Kafka, and that poll waits up to 10 s
for records that never come once the topics are read (`KafkaPartitionSplitReader.POLL_TIMEOUT`;
`SplitFetcher.enqueueTask` does not wake it). Every bounded run waited those 10 s before it
drained. The gauge is set by the source's task as it hands each record on, so a partition whose
gauge shows its last offset has every record ahead of any barrier a drain sends after it.

The mini-cluster's REST endpoint listens on a port chosen here (`mini_cluster_rest_port`), on
loopback; a session cluster's is `Settings.flink_cluster`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from pipelines.config import Settings

log = logging.getLogger("viewcount.flink_rest")
CURRENT_OFFSET = re.compile(r"KafkaSourceReader\.topic\.(?P<topic>.+)\.partition\.(?P<partition>\d+)\.currentOffset$")
TIMEOUT_S = 2.0


# Where the mini-cluster's REST port is chosen from: below the kernel's ephemeral range (the local
# ports of outgoing connections, net.ipv4.ip_local_port_range, 32768-60999 by default) and below the
# cluster stack's ports (29000 on). A free port probed inside the ephemeral range can be taken by a
# Kafka or ClickHouse client's connection before Flink binds it: seen once in CI, the job failing
# with "Could not start rest endpoint on any port in port range 42741".
REST_PORTS = range(20000, 29000)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _outside_ephemeral(ports: range) -> range:
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ports
    return range(ports.start, max(ports.start, min(ports.stop, low)))


@cache
def mini_cluster_rest_port() -> int:
    """A free loopback port for this process's mini-cluster's REST endpoint (one per process),
    outside the ports outgoing connections take (REST_PORTS)."""
    ports = _outside_ephemeral(REST_PORTS)
    for port in random.sample(ports, min(len(ports), 200)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # another listener's
            return port
    with socket.socket() as probe:  # all taken (or the ephemeral range moved below them): any free one
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rest_url(settings: Settings) -> str:
    if settings.flink_cluster:
        return f"http://{settings.flink_cluster}"
    return f"http://127.0.0.1:{mini_cluster_rest_port()}"


class SourcePositions:
    """Per (topic, partition) of `topics`, the offset after the last record the job's Kafka sources
    handed on. (A metric's name has a topic's dots as underscores.)"""

    def __init__(self, settings: Settings, job_id: str, topics: Iterable[str], rest: str | None = None):
        self.base = f"{rest or rest_url(settings)}/jobs/{job_id}"  # rest: another process's job
        self._topics = {topic.replace(".", "_"): topic for topic in topics}

    def _get(self, path: str):
        with urllib.request.urlopen(f"{self.base}{path}", timeout=TIMEOUT_S) as response:
            return json.load(response)

    def read(self) -> dict[tuple[str, int], int]:
        """The positions known now; {} when the REST API does not answer or the job has restarted
        (a restarted task reads again from its checkpoint, behind what its gauges showed before):
        the caller falls back to the committed offsets then."""
        try:
            restarts = self._get("/metrics?get=numRestarts")
            if any(float(m.get("value") or 0) > 0 for m in restarts):
                return {}
            positions: dict[tuple[str, int], int] = {}
            for vertex in self._get("")["vertices"]:
                if not vertex["name"].startswith("Source:"):
                    continue
                path = f"/vertices/{vertex['id']}/subtasks/metrics"
                # Listed every time: a gauge appears with its partition's first record.
                ids = [m["id"] for m in self._get(path) if CURRENT_OFFSET.search(m["id"])]
                if not ids:
                    continue
                for metric in self._get(f"{path}?agg=max&get={','.join(ids)}"):
                    found = CURRENT_OFFSET.search(metric["id"])
                    topic = self._topics.get(found["topic"]) if found else None
                    if topic and metric.get("max") is not None and metric["max"] >= 0:
                        key = (topic, int(found["partition"]))
                        positions[key] = max(positions.get(key, 0), int(metric["max"]) + 1)
            return positions
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            log.debug("the job's REST API did not answer (%s); its committed offsets stand", exc)
            return {}
