"""Services failing under the pipeline: the Kafka broker killed -9 and restarted while the generator
produces, ClickHouse stopped and then paused (SIGSTOP) mid-run. Run against a stack of this
module's own (fixture `private_stack`): these tests kill services, never the shared ones.

The promise: every event the producer saw acknowledged is counted exactly once; the pipeline
waits, retries with backoff, says so in its log, never crashes and never skips a batch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import (
    archive_counts,
    assert_stream_within_truth,
    compare_with_truth,
    fresh_namespace,
    pipeline_env,
    poll,
    rebuild_night,
    source_records,
    stack_command,
    start_pipeline,
)

from pipelines.config import REPO_ROOT
from pipelines.reference.generator import GroundTruth, generate_night
from pipelines.stack.clickhouse_server import clickhouse_service
from pipelines.stack.kafka_broker import kafka_service

# A stack of their own and a minute of deliberate outage each: in the long run (`pytest -m soak`),
# not in make test's budget.
pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.soak]
BROKER_DOWN_S = 20
CLICKHOUSE_STOPPED_S = 30
CLICKHOUSE_PAUSED_S = 30
# What the pipeline's log must say while it waits for a service (case-insensitive).
RETRY_SAID = re.compile(r"(?i)retry|retrying|backoff|waiting for")


def _hold(seconds: float, *runs) -> None:
    """Let an outage last `seconds`, checking every half second that the pipeline is still up.
    (The outage's length is the point of the test; the loop only watches.)"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for run in runs:
            assert run.alive(), f"the pipeline died during the outage (code {run.process.returncode}):\n{run.tail()}"
        time.sleep(0.5)


def _exact_before_and_after_rebuild(settings, truth) -> None:
    from pipelines.store.clickhouse import connect

    clickhouse = connect(settings)
    assert archive_counts(clickhouse) == {"view": truth.views, "impression": truth.impressions}
    # The stream's own rows first, before any rebuild could hide a window written twice.
    assert_stream_within_truth(clickhouse, truth)
    rebuild_night(clickhouse)
    result = compare_with_truth(clickhouse, truth)
    print(f"after the rebuild: {result}")
    assert result.exact, result


def test_broker_kill_9_and_restart_under_load_counts_every_acknowledged_event_once(private_stack, tmp_path):
    settings = fresh_namespace(private_stack, f"{private_stack.topics.prefix}_broker")
    scale, seed, rate = 10_000, 515, 4_000
    live = start_pipeline(settings, tmp_path, "live", bounded=False)
    # The broker must go while the job runs, not while its JVM is still starting: offer the load
    # once the job is RUNNING (its own Flink log says so).
    poll(lambda: live.says_in_flink_log("switched from state CREATED to RUNNING"), 900, "the live job running",
         alive=live)
    truth_path = tmp_path / "truth.json"
    generator = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "generate", "--scale", str(scale), "--seed", str(seed),
         "--rate", str(rate), "--truth", str(truth_path)],
        env=pipeline_env(settings), cwd=REPO_ROOT, stdout=(tmp_path / "generate.log").open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        truth = poll(lambda: truth_path.exists() and GroundTruth.read(truth_path), 600, "the generator's truth")
        poll(lambda: source_records(settings) > truth.deliveries // 3, 600, "a third of the night produced")
        kafka = kafka_service(settings)
        os.kill(kafka.running_pid(), signal.SIGKILL)
        _hold(BROKER_DOWN_S, live)
        assert generator.poll() is None, "the generator gave up while the broker was down"
        stack_command(settings, "up")
        assert generator.wait(timeout=600) == 0, (tmp_path / "generate.log").read_text()[-2000:]
        assert live.alive(), live.tail()
        # SIGTERM to the pipeline's own process, as a service manager sends it (to the whole
        # group, it would also reach PyFlink's JVM, which exits before the job is cancelled).
        os.kill(live.process.pid, signal.SIGTERM)
        assert live.wait(timeout_s=600) == 0, live.tail()
    finally:
        for process in (generator, live.process):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    catch_up = start_pipeline(settings, tmp_path, "catch-up")
    assert catch_up.wait(timeout_s=600) == 0, catch_up.tail()
    _exact_before_and_after_rebuild(settings, truth)


def test_clickhouse_stopped_then_paused_mid_run_the_pipeline_waits_and_loses_nothing(private_stack, tmp_path):
    from pipelines.store.clickhouse import connect

    settings = fresh_namespace(private_stack, f"{private_stack.topics.prefix}_ch")
    truth = generate_night(settings, scale=5_000, seed=616)
    run = start_pipeline(settings, tmp_path, "through-outage")
    clickhouse = connect(settings)
    service = clickhouse_service(settings)
    paused = None
    try:
        poll(lambda: clickhouse.execute("SELECT count() FROM events_raw")[0][0] > 0, 900,
             "the first events in ClickHouse", alive=run)
        clickhouse.disconnect()
        service.stop()
        _hold(CLICKHOUSE_STOPPED_S, run)
        stack_command(settings, "up")
        paused = service.running_pid()
        os.kill(paused, signal.SIGSTOP)
        _hold(CLICKHOUSE_PAUSED_S, run)
        os.kill(paused, signal.SIGCONT)
        paused = None
        assert run.wait(timeout_s=600) == 0, run.tail()
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        if run.alive():
            run.kill_9()
    assert RETRY_SAID.search(run.log.read_text(errors="replace")), "the log never says it is waiting/retrying"
    _exact_before_and_after_rebuild(settings, truth)
