"""The night through the whole cluster stack gives the night's figures (issue 21, the proof's first
half): the reference night produced to the cluster's Kafka (three nodes, every topic with three
copies), counted by the Flink job on the session cluster (two TaskManagers, parallelism 2), loaded by
ClickHouse's Kafka consumers on all four servers and by the runner's loader, change feed and subject
refresh, all through the Distributed tables. Then, read through the Distributed tables as the run left
them (nothing rebuilt, nothing polled for: the run's end says everything is loaded): every
post-minute exact, every sketch byte for byte what one server's code computes for the same viewers,
every row on its post's shard and on both of its replicas, the headline the night's.

Not part of `make test`: `make test-cluster` runs it (docs/scale-out.md). Its namespace (topics,
databases ON CLUSTER) is its own and removed at the end."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from pipelines import cluster
from pipelines.reference.generator import VIEW, build_night, generate_night
from pipelines.reference.testdata import malformed_records
from pipelines.rollups import sketches
from pipelines.rollups.subjects import get_subject
from pipelines.serve import figures_from_posts, figures_from_rollups, query
from pipelines.store.clickhouse import connect
from pipelines.store.tables import SHARDING_KEYS
from tests.expectations import (
    assert_figures_agree,
    assert_post_minutes_match_truth,
    assert_viewers_and_listeners_match_truth,
)
from tests.support import namespace, pipeline_env, poll

pytestmark = pytest.mark.cluster
SCALE = 10_000
SEED = 1208
SUBJECT = "space-2024-08-12"
NIGHT = ("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")
# The tables the night writes, each checked on every server: its rows on their own shard only.
SHARDED = ("events_raw", "post_minute", "post_surface_minute", "posts", "space_presence", "subject_posts",
           "rollup_changes")


@pytest.fixture(scope="module")
def night(cluster_stack, session_tag, timings, tmp_path_factory):
    """(settings, truth, the night itself, what was read the moment the run ended)."""
    base = cluster.cluster_settings(cluster_stack)
    with namespace(base, f"cnight{session_tag}", replication_factor=base.cluster.replication_factor) as settings:
        started = time.monotonic()
        truth = generate_night(settings, scale=SCALE, seed=SEED)
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        for event_type, raw, _ in malformed_records():
            producer.produce(settings.topics.source(event_type), raw, key=b"1")
        assert producer.flush(30) == 0
        timings.append(f"night: {truth.deliveries:,} records (+ {len(malformed_records())} malformed) produced "
                       f"to {settings.kafka_bootstrap} in {time.monotonic() - started:.1f} s")
        log = tmp_path_factory.mktemp("night") / "run.log"
        started = time.monotonic()
        with log.open("wb") as out:  # the cluster, the Flink session cluster and the parallelism: from the env
            done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--bounded"],
                                  env=pipeline_env(settings, VIEWCOUNT_FLINK_CLUSTER=settings.flink_cluster,
                                                   VIEWCOUNT_PARALLELISM=str(settings.parallelism)),
                                  stdout=out, stderr=subprocess.STDOUT, timeout=1200)
        took = time.monotonic() - started
        assert done.returncode == 0, log.read_text(errors="replace")[-3000:]
        timings.append(f"night: `viewcount run --bounded` on the cluster (parallelism {settings.parallelism}) "
                       f"took {took:.1f} s")
        client = connect(settings)
        # Read at once, as the run left them: a poll here would hide a run that ended before its rows were in.
        subject = get_subject(SUBJECT)
        start, end = query.parse_range(*NIGHT)
        at_end = {
            "archive": dict(client.execute("SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type")),
            "reference": figures_from_posts.subject_figures(client, subject, start, end),
            "rolled": figures_from_rollups.subject_rollup_figures(client, subject, start, end),
        }
        try:
            yield settings, truth, build_night(SCALE, SEED), at_end, client
        finally:
            client.disconnect()


def _server(settings, node):
    return connect(cluster.server_settings(settings, node))


def test_the_archive_holds_every_event_once_when_the_run_ends(night):
    _, truth, _, at_end, _ = night
    assert at_end["archive"] == {"view": truth.views, "impression": truth.impressions}


def test_no_row_waits_in_a_distributed_table_s_queue_when_the_run_ends(night):
    """Every insert through a Distributed table was synchronous (the writers' sessions, and the
    servers' default profile for the Kafka engine): an asynchronous one leaves its rows as files in
    the Distributed table's folder on the server that took it, to be sent later."""
    settings, _, _, _, _ = night
    queued = [path for service in cluster.clickhouse_services(settings).values()
              for table in SHARDING_KEYS
              for path in (service.home / "data" / "data" / settings.clickhouse.database / table).glob("*/*.bin")]
    assert queued == []


def test_every_post_minute_equals_the_ground_truth(night):
    _, truth, _, _, client = night
    assert_post_minutes_match_truth(client, truth)


def test_every_sketch_is_byte_for_byte_what_one_server_computes_for_the_same_viewers(night):
    """Each post-minute's sketch, built by whichever TaskManager had its post and loaded by whichever
    ClickHouse server's consumer had its partition, against pipelines.rollups.sketches over the
    night's own viewers of that minute (first deliveries, views only)."""
    _, truth, built, _, client = night
    viewers: dict[tuple[int, str], set[int]] = {}
    first_views = (~built.duplicate) & (built.kind == VIEW)
    for post, at, viewer in zip(built.post_id[first_views].tolist(), built.event_time[first_views].tolist(),
                                built.viewer_id[first_views].tolist(), strict=True):
        minute = datetime.fromtimestamp(at // 60_000 * 60, UTC).strftime("%Y-%m-%d %H:%M:%S")
        viewers.setdefault((post, minute), set()).add(viewer)
    stored = {(post, start.decode()): sketch for post, start, sketch in client.execute(
        "SELECT post_id, toString(window_start), unique_viewers_sketch FROM post_minute FINAL",
        settings={"strings_as_bytes": True})}
    on_time = [m for m in truth.post_minutes if not m.has_late_events]
    assert len(on_time) > 10_000
    for minute in on_time:
        key = (minute.post_id, minute.window_start)
        expected = sketches.to_bytes(sketches.sketch_of(viewers.get(key, ())))
        assert stored[key] == expected, key


def test_every_row_is_on_its_post_s_shard_and_on_both_of_its_replicas(night):
    settings, _, _, _, _ = night
    nodes = settings.cluster.clickhouse_nodes
    for table in SHARDED:
        key = SHARDING_KEYS[table]

        def counts(table: str = table) -> dict[str, int]:
            return {node.name: _server(settings, node).execute(f"SELECT count() FROM {table}_local")[0][0]
                    for node in nodes}

        for node in nodes:
            strays = _server(settings, node).execute(
                f"SELECT count() FROM {table}_local WHERE modulo({key}, %(shards)s) != %(slot)s",
                {"shards": settings.cluster.shards, "slot": node.shard - 1})
            assert strays == [(0,)], f"{node.name}: {table} rows of another shard"
        # A shard's second replica copies what its first took (internal_replication): allow it a moment.
        poll(lambda: all(len({n for node, n in counts().items() if node.startswith(f"clickhouse-s{s}")}) == 1
                         for s in range(1, settings.cluster.shards + 1)), 60,
             f"both replicas of each shard holding the same {table} rows")
        assert sum(counts().values()) > 0, table  # (one Space: its presence is all on one shard)


def test_the_headline_read_through_the_distributed_tables_is_the_night_s(night):
    """The subject's figures as the stream left them, from its post-minutes (what `viewcount query`
    reads) and from its live rollups (what dashboards read, refreshed by the runner): exactly the
    night's minutes summed, each minute the ground truth's (a minute with late events: what the
    stream counted of it, checked against the truth's bounds in the test above); and the night's own
    totals less at most the late views the archive marks (only the hourly rebuild counts those, not
    on a cluster yet)."""
    _, truth, built, at_end, client = night
    figures, rolled = at_end["reference"], at_end["rolled"]
    start, end = query.parse_range(*NIGHT)
    root, about = truth.subject_post_id, {int(p) for p in built.related_post_ids}
    stream = {(post, str(minute)): views for post, minute, views in client.execute(
        "SELECT post_id, window_start, views FROM post_minute FINAL WHERE post_id IN %(posts)s",
        {"posts": (root, *sorted(about))})}
    minutes = [m for m in truth.post_minutes if (m.post_id == root or m.post_id in about)
               and start <= datetime.fromisoformat(m.window_start).replace(tzinfo=UTC) < end]
    counted = {m: stream.get((m.post_id, m.window_start), 0) if m.has_late_events else m.views for m in minutes}
    assert figures.subject_views == sum(n for m, n in counted.items() if m.post_id == root)
    assert figures.views_of_posts_about == sum(n for m, n in counted.items() if m.post_id != root)
    assert figures.combined_views == sum(counted.values())
    assert figures.posts_about == truth.related_posts
    late = dict(client.execute(
        "SELECT post_id = %(root)s, count() FROM events_raw FINAL WHERE late AND event_type = 'view' "
        "AND post_id IN %(posts)s GROUP BY post_id = %(root)s", {"root": root, "posts": (root, *sorted(about))}))
    assert truth.subject_views - late.get(1, 0) <= figures.subject_views <= truth.subject_views
    assert truth.related_views - late.get(0, 0) <= figures.views_of_posts_about <= truth.related_views
    assert_viewers_and_listeners_match_truth(figures, truth)
    assert_figures_agree(figures, rolled)


def test_malformed_records_are_dead_lettered_once_with_their_reasons(night):
    _, _, _, _, client = night
    expected = Counter((raw.decode(), reason) for _, raw, reason in malformed_records())
    rows = client.execute("SELECT payload, reason FROM dead_letters FINAL")
    assert Counter(rows) == expected
