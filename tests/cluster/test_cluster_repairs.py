"""The repairs on the cluster (issue 21): the hourly rebuild, retention and erasure change the `_local`
tables shard by shard (pipelines/store/shards.py) and reach both replicas of each shard.

A handful of hand-made archive rows (no Flink: the stream's rows are written as its loader would, with
the late views left out), on posts of both shards. The rebuild makes every post-minute exact, on both
replicas of each shard, with the rows, sketch bytes included, of the single-server rebuild of the same
archive (a database of one server's shape beside it); a second rebuild gives the same rows. Retention
drops an expired hour on all four servers; an erasure leaves no row of the viewer on any of them.

Not part of `make test`: `make test-cluster` runs it (docs/scale-out.md)."""

from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipelines import cluster
from pipelines.repair import backfill, erasure, retention
from pipelines.rollups import sketches
from pipelines.store import migrate, shapes, shards
from pipelines.store.clickhouse import EVENTS_RAW, SPACE_PRESENCE, connect, insert_rows
from pipelines.store.tables import EVENTS_RAW_COLUMNS, POST_MINUTE_COLUMNS, TABLE_COLUMNS
from tests.support import namespace, poll

pytestmark = pytest.mark.cluster
SEED = 2112
POSTS = range(101, 141)  # 40 posts, on both shards
VIEWERS = range(1, 31)
ERASED = 7
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
REBUILT, ERASURE_HOUR = NOW - timedelta(hours=3), NOW - timedelta(hours=2)
EXPIRED = datetime(2024, 8, 12, 23, tzinfo=UTC)  # older than the 90 days of retention
ROLLUPS = ("post_minute", "post_hour", "post_surface_minute")
ROLLUP_ORDER = {"post_minute": "post_id, window_start", "post_hour": "post_id, hour_start",
                "post_surface_minute": "post_id, window_start, surface, action"}


def _events(hour: datetime, rng: random.Random, viewers=VIEWERS) -> list[dict]:
    """Views and impressions of the hour, a few delivered twice, one in six views late (the stream
    closed its window before it came: archived with late = 1, never counted by the stream)."""
    events = []
    for post in POSTS:
        for n in range(rng.randint(3, 12)):
            at = hour + timedelta(minutes=rng.randrange(0, 3), seconds=rng.randrange(60))
            kind = "view" if rng.random() < 0.8 else "impression"
            event = {"event_type": kind, "event_id": f"{post}-{hour:%H}-{n}", "event_time": at.replace(tzinfo=None),
                     "event_time_ms": int(at.timestamp() * 1000), "post_id": post, "author_id": 3,
                     "viewer_id": rng.choice(viewers), "surface": rng.choice(("home", "search")), "client": "web",
                     "action": "", "late": int(kind == "view" and rng.random() < 1 / 6)}
            events += [event] * (2 if rng.random() < 0.1 else 1)
    return events


def _archive(client, events: list[dict]) -> None:
    columns = (*EVENTS_RAW_COLUMNS, "late")
    insert_rows(client, EVENTS_RAW, columns, [tuple(e[c] for c in columns) for e in events])


def _minutes(events: list[dict], counted=lambda e: True) -> dict[tuple, tuple]:
    """(post, minute) -> (views, impressions, sketch bytes) of the distinct events `counted`."""
    by_minute: dict[tuple, dict] = {}
    for e in {e["event_id"]: e for e in events if counted(e)}.values():
        minute = by_minute.setdefault((e["post_id"], e["event_time"].replace(second=0)),
                                      {"view": 0, "impression": 0, "viewers": set()})
        minute[e["event_type"]] += 1
        if e["event_type"] == "view":
            minute["viewers"].add(e["viewer_id"])
    return {key: (m["view"], m["impression"], sketches.to_bytes(sketches.sketch_of(m["viewers"])))
            for key, m in by_minute.items()}


def _stream_rows(minutes: dict[tuple, tuple]) -> list[tuple]:
    """post_minute rows as the stream's loader writes them (version: milliseconds of the emit)."""
    version = int(time.time() * 1000)
    return [(post, minute, views, impressions, sketch, sketches.from_bytes(sketch).get_estimate(), version)
            for (post, minute), (views, impressions, sketch) in minutes.items()]


def _rows(client, table: str, hour: datetime) -> list[tuple]:
    """The hour's rows of a rollup table (FINAL), version left out, in key order."""
    window = "hour_start" if table.startswith("post_hour") else "window_start"
    return [row[:-1] for row in client.execute(
        f"SELECT * FROM {table} FINAL WHERE {window} >= %(from)s AND {window} < %(to)s "
        f"ORDER BY {ROLLUP_ORDER[table.removesuffix(shapes.LOCAL_SUFFIX)]}",
        {"from": hour.replace(tzinfo=None), "to": (hour + timedelta(hours=1)).replace(tzinfo=None)},
        settings={"strings_as_bytes": True})]


@pytest.fixture(scope="module")
def repairs(cluster_stack, session_tag, timings):
    """(settings, shape, a writer's client through the Distributed tables, a client per server, the
    single-server database's client). The archive holds REBUILT's and ERASURE_HOUR's events."""
    base = cluster.cluster_settings(cluster_stack)
    with namespace(base, f"crepair{session_tag}", replication_factor=base.cluster.replication_factor) as settings:
        shape = shapes.configured(settings)
        client = connect(settings)
        servers = {node.name: connect(cluster.server_settings(settings, node))
                   for node in settings.cluster.clickhouse_nodes}
        one_server = replace(settings, clickhouse_cluster="", clickhouse_servers_cluster="")
        single_db = f"{settings.clickhouse.database}_one"
        admin = connect(one_server, database="default")
        started = time.monotonic()
        migrate.apply_migrations(admin, single_db, shape=None)  # one server's shape, on s1r1 only
        timings.append(f"repairs: the single-server database migrated in {time.monotonic() - started:.1f} s")
        single = connect(one_server, database=single_db)
        try:
            yield settings, shape, client, servers, single
        finally:
            migrate.drop_database(admin, single_db, None)
            for server in (client, admin, single, *servers.values()):
                server.disconnect()


def _shard_of(client, post: int) -> int:
    return client.execute("SELECT cityHash64(%(p)s) %% 2 + 1", {"p": post})[0][0]


def test_late_events_are_exact_after_the_rebuild_on_both_replicas_of_each_shard(repairs, timings):
    settings, shape, client, servers, single = repairs
    events = _events(REBUILT, random.Random(SEED))
    _archive(client, events)
    truth = _minutes(events)
    stream = _minutes(events, counted=lambda e: not e["late"])
    insert_rows(client, "post_minute", POST_MINUTE_COLUMNS, _stream_rows(stream))
    before = {(p, m.replace(tzinfo=None)): (v, i, s) for p, m, v, i, s, _ in _rows(client, "post_minute", REBUILT)}
    assert before == stream and sum(v for v, _, _ in before.values()) < sum(v for v, _, _ in truth.values()), (
        "the stream's rows should leave the late views out")

    started = time.monotonic()
    report = backfill.rebuild_hour(client, REBUILT, shape=shape)
    timings.append(f"repairs: rebuild of an hour ({report.rows} post-minutes, {len(events)} archived rows) on the "
                   f"cluster in {time.monotonic() - started:.2f} s")
    assert (report.rows, report.views) == (len(truth), sum(v for v, _, _ in truth.values()))
    after = {(p, m.replace(tzinfo=None)): (v, i, s) for p, m, v, i, s, _ in _rows(client, "post_minute", REBUILT)}
    assert after == truth  # read at once through Distributed: each shard's first replica was rebuilt

    # The single-server rebuild of the same archive: the same rows, sketch bytes included.
    _archive(single, events)
    backfill.rebuild_hour(single, REBUILT)
    for table in ROLLUPS:
        assert _rows(client, table, REBUILT) == _rows(single, table, REBUILT), table

    # Both replicas of each shard: its own posts' rows, the same on both (the second by replication).
    shard_of = {post: _shard_of(client, post) for post in POSTS}
    for table in ROLLUPS:
        whole = _rows(single, table, REBUILT)
        for node in settings.cluster.clickhouse_nodes:
            own = [row for row in whole if shard_of[row[0]] == node.shard]
            poll(lambda node=node, table=table, own=own: _rows(servers[node.name], f"{table}_local", REBUILT) == own,
                 60, f"{node.name}'s {table}_local holding its shard's rebuilt hour")


def test_a_second_rebuild_gives_the_same_rows_with_a_higher_version(repairs):
    settings, shape, client, servers, _ = repairs
    hour = REBUILT - timedelta(hours=2)
    _archive(client, _events(hour, random.Random(SEED + 1)))
    backfill.rebuild_hour(client, hour, shape=shape, version=backfill.backfill_version() - 10)
    first = {t: _rows(client, t, hour) for t in ROLLUPS}
    assert first["post_minute"]
    backfill.rebuild_hour(client, hour, shape=shape)
    assert {t: _rows(client, t, hour) for t in ROLLUPS} == first
    versions = client.execute("SELECT min(version), max(version) FROM post_minute FINAL WHERE window_start >= %(from)s "
                              "AND window_start < %(to)s", backfill.hour_window(hour.replace(tzinfo=None)))
    assert versions[0][0] == versions[0][1] > backfill.backfill_version() - 10
    for name, server in servers.items():  # and no staging table left behind on any server
        assert not server.execute("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                  "AND name LIKE '%staging%'"), name


def test_retention_drops_an_expired_hour_on_all_four_servers(repairs, timings):
    settings, shape, client, servers, _ = repairs
    _archive(client, _events(EXPIRED, random.Random(SEED + 2)))
    insert_rows(client, SPACE_PRESENCE, TABLE_COLUMNS[SPACE_PRESENCE], [
        (space, 5, EXPIRED.replace(tzinfo=None), int(EXPIRED.timestamp() * 1000), "join", f"p{space}")
        for space in range(1, 11)])
    partition = f"{EXPIRED:%Y%m%d%H}"

    def partitions(server, table: str) -> set[str]:
        return {p for (p,) in server.execute("SELECT DISTINCT partition FROM system.parts WHERE database = "
                                             "currentDatabase() AND table = %(t)s AND active", {"t": table})}

    for name, server in servers.items():  # on every server before: the archive's hour and the presence
        poll(lambda server=server: partition in partitions(server, "events_raw_local")
             and partition in partitions(server, "space_presence_local"), 60, f"{name} holding {partition}")
    kept = {name: partitions(server, "events_raw_local") - {partition} for name, server in servers.items()}
    started = time.monotonic()
    report = retention.drop_expired(client, 90, shape=shape)
    timings.append(f"repairs: retention on the cluster in {time.monotonic() - started:.2f} s")
    assert report.dropped == {EVENTS_RAW: [partition], SPACE_PRESENCE: [partition]}
    for name, server in servers.items():
        poll(lambda server=server: partition not in partitions(server, "events_raw_local")
             and partition not in partitions(server, "space_presence_local"), 60, f"{name} dropping {partition}")
        assert partitions(server, "events_raw_local") == kept[name], f"{name} lost a partition it should keep"


def test_the_change_log_is_pruned_on_every_server(repairs, timings):
    """The runner's hourly pruning of rollup_changes (subject_rollups.prune_changes) drops the days
    every subject has read past from both shards' `_local` tables, on both replicas of each."""
    from pipelines.rollups import subject_rollups
    from pipelines.store.tables import ROLLUP_CHANGES

    settings, shape, client, servers, _ = repairs
    old, recent = datetime(2024, 8, 10, 12), datetime(2024, 8, 14, 12)
    keys = list(POSTS)  # notes on both shards (the shard of their key)
    insert_rows(client, ROLLUP_CHANGES, TABLE_COLUMNS[ROLLUP_CHANGES],
                [("posts", key, day, day) for key in keys for day in (old, recent)])

    def days(server) -> set[str]:
        return {d for (d,) in server.execute("SELECT DISTINCT toString(toDate(changed_at)) FROM rollup_changes_local")}

    for name, server in servers.items():  # both days on every server (each shard holds notes of both)
        poll(lambda server=server: {"2024-08-10", "2024-08-14"} <= days(server), 60, f"{name} holding both days")
    report = subject_rollups.RefreshReport("a-subject", full=False)
    report.read_to = datetime(2024, 8, 14, 1)
    started = time.monotonic()
    assert subject_rollups.prune_changes(client, [report], shape) == ["20240810"]
    timings.append(f"repairs: the change log pruned on the cluster in {time.monotonic() - started:.2f} s")
    for name, server in servers.items():
        poll(lambda server=server: "2024-08-10" not in days(server), 60, f"{name} dropping 2024-08-10")
        assert "2024-08-14" in days(server), name


def test_an_erasure_leaves_no_row_of_the_viewer_on_any_server(repairs, timings):
    settings, shape, client, servers, _ = repairs
    viewers = range(1001, 1031)
    erased = viewers[ERASED]
    events = _events(ERASURE_HOUR, random.Random(SEED + 3), viewers)
    at = ERASURE_HOUR + timedelta(minutes=1)
    events += [{**events[0], "event_type": "view", "event_id": f"erased-{post}", "post_id": post, "viewer_id": erased,
                "event_time": at.replace(tzinfo=None), "event_time_ms": int(at.timestamp() * 1000), "late": 0}
               for post in POSTS[::4]]  # and views of ten posts, on both shards
    _archive(client, events)
    insert_rows(client, SPACE_PRESENCE, TABLE_COLUMNS[SPACE_PRESENCE], [
        (1, erased, ERASURE_HOUR.replace(tzinfo=None), int(ERASURE_HOUR.timestamp() * 1000), "join", "p-erased")])
    posts_seen = {e["post_id"] for e in events if e["viewer_id"] == erased}
    assert {_shard_of(client, p) for p in posts_seen} == {1, 2}, "the viewer should have rows on both shards"

    def rows_of_viewer(server) -> tuple[int, int]:
        return (server.execute("SELECT count() FROM events_raw_local WHERE viewer_id = %(v)s", {"v": erased})[0][0],
                server.execute("SELECT count() FROM space_presence_local WHERE listener_id = %(v)s",
                               {"v": erased})[0][0])

    presence_shard = _shard_of(client, 1)  # space_presence is sharded by Space (cityHash64(space_id))
    for node in settings.cluster.clickhouse_nodes:
        server = servers[node.name]
        poll(lambda server=server, node=node: rows_of_viewer(server)[0] > 0
             and rows_of_viewer(server)[1] == int(node.shard == presence_shard), 60,
             f"{node.name} holding the viewer's rows")
    started = time.monotonic()
    report = erasure.erase(client, [erased], requested_by="test", shape=shape)
    timings.append(f"repairs: erasure on the cluster in {time.monotonic() - started:.1f} s "
                   f"({report.mutation_seconds:.1f} s waiting for mutations, {report.repair_seconds:.1f} s rebuilding)")
    assert report.rows[EVENTS_RAW] == sum(e["viewer_id"] == erased for e in events)
    assert report.hours == [ERASURE_HOUR.replace(tzinfo=None)]
    for name, server in servers.items():  # at once: the erasure waited for every server's mutations
        assert rows_of_viewer(server) == (0, 0), name
    # The hour was rebuilt without them: every post-minute as the archive's other viewers make it.
    truth = _minutes(events, counted=lambda e: e["viewer_id"] != erased)
    after = {(p, m.replace(tzinfo=None)): (v, i, s) for p, m, v, i, s, _ in _rows(client, "post_minute", ERASURE_HOUR)}
    assert after == truth


def test_a_replica_down_leaves_the_rebuild_to_its_sibling_and_a_shard_down_stops_it(repairs, timings):
    """Last in the module: it stops shard 2's servers (their process, as `make cluster-down` does) and
    always starts them again."""
    settings, shape, client, servers, single = repairs
    hour = REBUILT - timedelta(hours=4)
    events = _events(hour, random.Random(SEED + 4))
    _archive(client, events)
    _archive(single, events)
    backfill.rebuild_hour(single, hour)
    whole = _rows(single, "post_minute", hour)
    shard_of = {post: _shard_of(client, post) for post in POSTS}
    second = [node for node in settings.cluster.clickhouse_nodes if node.shard == 2]
    services = cluster.clickhouse_services(settings)
    archived = sum(shard_of[e["post_id"]] == 2 for e in {e["event_id"]: e for e in events}.values())

    def archive_of_hour(server) -> int:
        return server.execute("SELECT count() FROM events_raw_local FINAL WHERE event_time >= %(from)s "
                              "AND event_time < %(to)s", backfill.hour_window(hour.replace(tzinfo=None)))[0][0]

    for node in second:  # both replicas of shard 2 hold its archive of the hour before one goes
        poll(lambda node=node: archive_of_hour(servers[node.name]) == archived, 60,
             f"{node.name} holding its shard's archive of the hour")
    try:
        assert services[second[0]].stop(), f"{second[0].name} did not stop"
        started = time.monotonic()
        report = backfill.rebuild_hour(client, hour, shape=shape)
        timings.append(f"repairs: rebuild with {second[0].name} down in {time.monotonic() - started:.2f} s")
        assert report.rows == len(whole)
        assert _rows(client, "post_minute", hour) == whole  # through Distributed: shard 2 read from its second replica
        sibling = connect(cluster.server_settings(settings, second[1]))
        assert _rows(sibling, "post_minute_local", hour) == [r for r in whole if shard_of[r[0]] == 2]
        sibling.disconnect()
        before = client.execute("SELECT max(version) FROM post_minute_local")
        assert services[second[1]].stop(), f"{second[1].name} did not stop"
        with pytest.raises(shards.ShardUnavailable, match=r"shard 2: .*29003.*unreachable.*29004.*unreachable"):
            backfill.rebuild_hour(client, hour, shape=shape)
        assert client.execute("SELECT max(version) FROM post_minute_local") == before, "shard 1 changed all the same"
        assert not client.execute("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                  "AND name LIKE '%staging%'")
    finally:
        started = time.monotonic()
        cluster.start_clickhouse_nodes(settings)
        # Back: the first replica fetches the hour its sibling swapped in while it was down.
        own = [r for r in whole if shard_of[r[0]] == 2]
        first = connect(cluster.server_settings(settings, second[0]))
        poll(lambda: _rows(first, "post_minute_local", hour) == own, 120,
             f"{second[0].name}, started again, holding the hour its sibling rebuilt")
        first.disconnect()
        timings.append(f"repairs: shard 2 started again and {second[0].name} caught up in "
                       f"{time.monotonic() - started:.1f} s")
