"""The same job on a standalone Flink session cluster (one JobManager, two TaskManagers as
processes: make cluster-up) at parallelism 2 gives the exact counts of the ground truth, and the
same sketch bytes as the archive's rebuild, which the local mini-cluster's rows equal byte for byte
(tests/e2e/test_backfill.py): whichever TaskManager built a sketch, its bytes are the same."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.reference.generator import generate_night
from tests.sockets import assert_loopback_only, process_tree
from tests.support import namespace, pipeline_env

pytestmark = pytest.mark.e2e
SCALE = 10_000
SEED = 1208


@pytest.fixture(scope="module")
def flink_cluster(stack_settings):
    from pipelines.stream import flink_cluster

    was_running = flink_cluster.overview(stack_settings) is not None
    flink_cluster.up(stack_settings, taskmanagers=2)
    yield flink_cluster.address(stack_settings)
    if not was_running:
        flink_cluster.down(stack_settings)


def _minutes(client) -> dict:
    rows = client.execute(
        "SELECT post_id, toString(window_start), views, impressions, unique_viewers_sketch FROM post_minute FINAL",
        settings={"strings_as_bytes": True})
    return {(post, start.decode()): (views, impressions, sketch) for post, start, views, impressions, sketch in rows}


def _archive_sketches(client) -> dict:
    """Every post-minute's sketch as the hourly rebuild makes it from the archive."""
    from pipelines.repair.backfill import hours_with_events
    from pipelines.repair.reconcile import archive_rollups

    return {(m.post_id, f"{m.window_start:%Y-%m-%d %H:%M:%S}"): m.sketch
            for hour in hours_with_events(client) for m in archive_rollups(client, hour, 1, 0)}


def test_the_night_on_a_flink_cluster_at_parallelism_2_is_exact_and_sketches_as_the_rebuild(
        stack_settings, session_tag, flink_cluster, tmp_path):
    from pipelines.store.clickhouse import connect

    with namespace(stack_settings, f"cluster{session_tag}") as settings:
        truth = generate_night(settings, scale=SCALE, seed=SEED)
        log = tmp_path / "cluster.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "pipelines.cli", "run", "--bounded", "--cluster", flink_cluster,
                       "--parallelism", "2"]
            done = subprocess.run(command, env=pipeline_env(settings), stdout=out, stderr=subprocess.STDOUT,
                                  timeout=1200)
        assert done.returncode == 0, log.read_text(errors="replace")[-3000:]
        client = connect(settings)
        counts = dict(client.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
        assert counts == {"view": truth.views, "impression": truth.impressions}
        on_time = {(m.post_id, m.window_start): (m.views, m.impressions)
                   for m in truth.post_minutes if not m.has_late_events}
        minutes, rebuilt = _minutes(client), _archive_sketches(client)
        assert len(on_time) > 1000
        for key, expected in on_time.items():
            views, impressions, sketch = minutes[key]
            assert (views, impressions) == expected, key
            assert sketch == rebuilt[key], key
        client.disconnect()


def test_the_cluster_listens_on_loopback_only(stack_settings, flink_cluster):
    """JobManager (RPC, blob server, REST, metrics RPC) and TaskManagers (RPC, metrics RPC, shuffle
    server): every socket they listen on is on loopback (stack/flink/config.yaml.template)."""
    from pipelines.stream import flink_cluster as cluster

    pids = cluster.pids(stack_settings)
    if not pids:
        pytest.skip(f"the cluster at {flink_cluster} was not started from {stack_settings.state_dir}")
    assert len(pids) >= 3, pids  # the JobManager and two TaskManagers
    assert_loopback_only("the Flink session cluster", {p for pid in pids for p in process_tree(pid)},
                         set(cluster.ports(stack_settings).values()))
