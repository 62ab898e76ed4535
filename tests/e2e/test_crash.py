"""kill -9 of the running pipeline (Flink job and loader together) loses nothing and doubles nothing.

The job restarts from its last retained checkpoint (window state, Kafka offsets, open sink
transactions come back together); the loader re-reads what it had not committed, and the
ReplacingMergeTree tables absorb the repeat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.reference.generator import generate_night

pytestmark = pytest.mark.e2e


def _env(settings) -> dict:
    return {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
            "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url, "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "VIEWCOUNT_STATE_DIR": str(settings.state_dir)}


def _run(settings, log: Path) -> subprocess.Popen:
    # The log goes to a file: a pipe nobody reads fills up and blocks the pipeline's logging.
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", "--bounded"], env=_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def test_kill_9_mid_run_then_restart_loses_and_doubles_nothing(own_stack, tmp_path):
    from pipelines.store.clickhouse import connect

    settings = own_stack
    clickhouse = connect(settings)
    truth = generate_night(settings, scale=5_000, seed=99)
    first = _run(settings, tmp_path / "first.log")
    # Kill once the pipeline has checkpointed and loaded part of the night, not all of it.
    deadline = time.monotonic() + 240
    while True:
        assert first.poll() is None, _tail(tmp_path / "first.log")
        assert time.monotonic() < deadline, "nothing reached ClickHouse within 240 s"
        (loaded,), = clickhouse.execute("SELECT count() FROM events_raw")
        if loaded > 0:
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    (at_kill,), = clickhouse.execute("SELECT count() FROM events_raw FINAL")
    assert at_kill < truth.views + truth.impressions, "killed too late to prove anything"

    second = _run(settings, tmp_path / "second.log")
    try:
        assert second.wait(timeout=600) == 0, _tail(tmp_path / "second.log")
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    counts = dict(clickhouse.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
    assert counts == {"view": truth.views, "impression": truth.impressions}
    stream = {(p, str(w)): (v, i) for p, w, v, i in clickhouse.execute(
        "SELECT post_id, window_start, views, impressions FROM post_minute FINAL")}
    for post_id, window_start, views, impressions, _, late_views, late_impressions in truth.post_minutes:
        got = stream.get((post_id, window_start), (0, 0))
        assert views - late_views <= got[0] <= views and impressions - late_impressions <= got[1] <= impressions
        if not (late_views or late_impressions):
            assert got == (views, impressions), (post_id, window_start)
