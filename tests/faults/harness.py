"""What the fault tests share: the pipeline as a subprocess of its CLI, a private stack, exact checks.

The tests drive `python -m pipelines.cli run` exactly as an operator would (VIEWCOUNT_* in the
environment), so they keep holding while the job's internals change. Each run gets a Flink log
folder of its own (FLINK_LOG_DIR, read by PyFlink's gateway launcher): the JVM's log is where a
restart of the job shows ("switched from state RUNNING to RESTARTING"), which is how the tests
count restarts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.config import REPO_ROOT, Settings, Topics
from tests.support import pipeline_env, poll  # noqa: F401 - the fault tests take them from here

# A job restart in the JobManager's log: the job leaves RUNNING for RESTARTING (or fails).
RESTART_LINE = re.compile(r"switched from state \w+ to (RESTARTING|FAILING|FAILED)")


@dataclass
class PipelineRun:
    """One `viewcount run` process (its own session, so kill -9 takes the JVM child with it)."""

    process: subprocess.Popen
    log: Path
    flink_log_dir: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def says(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text(errors="replace")

    def says_in_flink_log(self, text: str) -> bool:
        return any(text in p.read_text(errors="replace") for p in self.flink_log_dir.glob("*.log"))

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def wait(self, timeout_s: float) -> int:
        """The exit code; a run still going at the deadline is killed and reported."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_9()
            raise AssertionError(f"the pipeline did not finish within {timeout_s:.0f} s:\n{self.tail()}") from None

    def finish_unless_restarted(self, timeout_s: float) -> int | None:
        """Wait for the run's exit code; None (run killed) as soon as the Flink job restarts, or
        at the deadline: a job that restarts on a record restarts on it forever."""
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if self.restarts() or time.monotonic() > deadline:
                self.kill_9()
                return None
            time.sleep(1)
        return self.process.returncode

    def restarts(self) -> list[str]:
        """Lines of the job's log where the Flink job left RUNNING for a restart or a failure."""
        found = []
        for path in self.flink_log_dir.glob("*.log"):
            found += [line for line in path.read_text(errors="replace").splitlines() if RESTART_LINE.search(line)]
        return found

    def flink_log_lines(self) -> int:
        return sum(len(p.read_text(errors="replace").splitlines()) for p in self.flink_log_dir.glob("*.log"))


# Every run started, so a failing test's runs are killed at its teardown (conftest.py).
STARTED: list[PipelineRun] = []


def start_pipeline(settings: Settings, folder: Path, name: str, bounded: bool = True) -> PipelineRun:
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    flink_logs = folder / f"{name}-flink"
    argv = [sys.executable, "-m", "pipelines.cli", "run"] + (["--bounded"] if bounded else [])
    # The log goes to a file: a pipe nobody reads fills up and blocks the pipeline's logging.
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=pipeline_env(settings, flink_logs), cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(PipelineRun(process, log, flink_logs))
    return STARTED[-1]


def rebuild_night(client) -> int:
    """The hourly backfill over every hour with events, as the Dagster schedule would run it."""
    from pipelines.repair.backfill import hours_with_events, rebuild_hour

    hours = hours_with_events(client)
    for hour in hours:
        rebuild_hour(client, hour)
    return len(hours)


def archive_counts(client) -> dict[str, int]:
    return dict(client.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))


def minute_rows(client) -> dict[tuple[int, str], tuple[int, int]]:
    return {(p, str(w)): (v, i) for p, w, v, i in client.execute(
        "SELECT post_id, window_start, views, impressions FROM post_minute FINAL")}


@dataclass
class Discrepancy:
    """Windows of ground truth against ClickHouse's post_minute: what is missing or doubled."""

    windows: int = 0
    lost_views: int = 0
    doubled_views: int = 0
    lost_impressions: int = 0
    doubled_impressions: int = 0
    extra_windows: int = 0
    first: list | None = None

    @property
    def exact(self) -> bool:
        return not (self.lost_views or self.doubled_views or self.lost_impressions or self.doubled_impressions
                    or self.extra_windows)


def compare_with_truth(client, truth) -> Discrepancy:
    """Every post-minute of the ground truth (late events included: call after the rebuild)."""
    rows = minute_rows(client)
    result = Discrepancy()
    for post_id, window_start, views, impressions, *_ in truth.post_minutes:
        got_views, got_impressions = rows.pop((post_id, window_start), (0, 0))
        result.windows += 1
        result.lost_views += max(views - got_views, 0)
        result.doubled_views += max(got_views - views, 0)
        result.lost_impressions += max(impressions - got_impressions, 0)
        result.doubled_impressions += max(got_impressions - impressions, 0)
        if (got_views, got_impressions) != (views, impressions) and result.first is None:
            result.first = [post_id, window_start, (views, impressions), (got_views, got_impressions)]
    result.extra_windows = len(rows)
    return result


def assert_stream_within_truth(client, truth) -> int:
    """The stream's rows before any rebuild: windows without late events exact, the others between
    'on time only' and 'all' (a late event may have beaten the watermark, never twice). Returns
    the number of windows compared exactly."""
    rows = minute_rows(client)
    exact = 0
    for post_id, window_start, views, impressions, _, late_views, late_impressions in truth.post_minutes:
        got = rows.pop((post_id, window_start), (0, 0))
        if not (late_views or late_impressions):
            assert got == (views, impressions), (post_id, window_start, got, (views, impressions))
            exact += 1
        else:
            assert views - late_views <= got[0] <= views, (post_id, window_start)
            assert impressions - late_impressions <= got[1] <= impressions, (post_id, window_start)
    assert rows == {}, f"{len(rows)} windows in ClickHouse that the night does not have, e.g. {next(iter(rows))}"
    return exact


# --- a private stack: for the tests that kill or pause services ------------------------------

def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the kernel's pick), for a private stack's listeners."""
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def private_settings(state_dir: Path, prefix: str) -> Settings:
    """Settings for a stack of our own: its own state folder (jars shared by a link), its own ports."""
    shared = Settings.from_env()
    state_dir.mkdir(parents=True, exist_ok=True)
    jars = state_dir / "jars"
    if not jars.exists():
        jars.symlink_to(shared.jars_dir.resolve())
    kafka, controller, native, http = free_ports(4)
    target = shared.clickhouse
    return replace(
        shared, state_dir=state_dir, kafka_bootstrap=f"127.0.0.1:{kafka}", kafka_controller_port=controller,
        clickhouse_http_port=http, topics=Topics(prefix=prefix),
        clickhouse_url=f"clickhouse://{target.user}:{target.password}@127.0.0.1:{native}/viewcount_{prefix}",
    )


def stack_command(settings: Settings, action: str) -> str:
    """`python -m pipelines.stack <action>` under the private stack's environment."""
    done = subprocess.run([sys.executable, "-m", "pipelines.stack", action], env=pipeline_env(settings),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"stack {action} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_namespace(settings: Settings, name: str) -> Settings:
    """Topics and a migrated database of their own on the same services (one test's namespace).

    The topics keep their records forever: the generator stamps records with the night's times
    (2024), and a time retention (7 days by default) lets the broker delete them, measured here
    within 2 minutes of producing, before the job had read them."""
    from pipelines.stack.kafka_broker import create_topics
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations

    own = replace(settings, topics=Topics(prefix=name), topic_retention_ms=-1,
                  clickhouse_url=settings.clickhouse.url(f"viewcount_{name}"))
    create_topics(own)
    apply_migrations(connect(own, database="default"), own.clickhouse.database)
    return own


def source_records(settings: Settings) -> int:
    """Records in the source topics now (sum of their partitions' end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    from pipelines.config import EVENT_TYPES

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "faults-probe"})
    try:
        total = 0
        for event_type in EVENT_TYPES:
            topic = settings.topics.source(event_type)
            for partition in range(settings.topic_partitions):
                total += consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        return total
    finally:
        consumer.close()
