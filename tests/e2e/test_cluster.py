"""The same job on a standalone Flink session cluster (one JobManager, two TaskManagers as
processes: make cluster-up) at parallelism 2 gives the same exact counts and the same sketch bytes
as on the local mini-cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from pipelines.config import Topics
from pipelines.reference.generator import generate_night
from pipelines.store.migrate import drop_database
from tests.sockets import assert_loopback_only, process_tree

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


def _stack(base, name: str):
    from pipelines.stack.kafka_broker import create_topics
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations

    target = base.clickhouse
    settings = replace(base, topics=Topics(prefix=name), clickhouse_url=(
        f"clickhouse://{target.user}:{target.password}@{target.host}:{target.port}/viewcount_{name}"))
    create_topics(settings)
    apply_migrations(connect(settings, database="default"), settings.clickhouse.database)
    return settings


def _run(settings, log, *flags: str) -> None:
    env = {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
           "VIEWCOUNT_STATE_DIR": str(settings.state_dir),
           "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url, "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--bounded", *flags], env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    assert done.returncode == 0, log.read_text(errors="replace")[-3000:]


def _minutes(settings) -> dict:
    from pipelines.store.clickhouse import connect

    rows = connect(settings).execute(
        "SELECT post_id, toString(window_start), views, impressions, unique_viewers_sketch FROM post_minute FINAL",
        settings={"strings_as_bytes": True})
    return {(post, start.decode()): (views, impressions, sketch) for post, start, views, impressions, sketch in rows}


def test_the_night_on_a_flink_cluster_at_parallelism_2_equals_the_mini_cluster(
        stack_settings, session_tag, flink_cluster, tmp_path):
    from pipelines.store.clickhouse import connect

    local, remote = _stack(stack_settings, f"local{session_tag}"), _stack(stack_settings, f"cluster{session_tag}")
    try:
        truth = generate_night(local, scale=SCALE, seed=SEED)
        generate_night(remote, scale=SCALE, seed=SEED)
        _run(local, tmp_path / "local.log")
        _run(remote, tmp_path / "cluster.log", "--cluster", flink_cluster, "--parallelism", "2")
        for settings in (local, remote):
            counts = dict(connect(settings).execute(
                "SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"))
            assert counts == {"view": truth.views, "impression": truth.impressions}, settings.topics.prefix
        on_time = {(m.post_id, m.window_start): (m.views, m.impressions)
                   for m in truth.post_minutes if not m.has_late_events}
        local_minutes, cluster_minutes = _minutes(local), _minutes(remote)
        for key, counts in on_time.items():
            assert local_minutes[key][:2] == counts, key
            # The same viewers give the same sketch bytes, whichever TaskManager built them.
            assert cluster_minutes[key] == local_minutes[key], key
    finally:
        for settings in (local, remote):
            drop_database(connect(settings, database="default"), settings.clickhouse.database)


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
