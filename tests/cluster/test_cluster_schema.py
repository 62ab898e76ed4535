"""The migrations make the cluster's schema from the same files (pipelines/store/shapes.py): every
table of the registry on all four servers, replicated, with its columns, and a Distributed table under
its name; rows written through the Distributed tables land on their post's shard and read back exact,
with FINAL, from any server; migrating again does nothing.

Not part of `make test`: `make test-cluster` runs it (docs/scale-out.md). One fresh database (and its
companions) for the module, dropped ON CLUSTER at its end."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_driver.errors import ServerException

from pipelines import cluster
from pipelines.store import migrate, shapes
from pipelines.store.clickhouse import connect
from pipelines.store.tables import (
    FILLED_BY_CLICKHOUSE,
    ON_EVERY_SERVER,
    POST_MINUTE_COLUMNS,
    PSEUDONYM_KEY,
    SHARDING_KEYS,
    TABLE_COLUMNS,
)
from tests.support import poll

pytestmark = pytest.mark.cluster
SEED = 2121
POSTS, MINUTES = 40, 3
NIGHT = datetime(2024, 8, 12, 23, 47, tzinfo=UTC)
SYNC = {"insert_distributed_sync": 1}
# A renamed replicated table keeps the ZooKeeper path it was made with (migration 0013's swap).
CREATED_AS = {"dead_letters": "dead_letters_by_day_local"}


@pytest.fixture(scope="module")
def schema(cluster_stack, session_tag, timings):
    """A fresh database migrated on the cluster: (settings, shape, database, what was applied)."""
    shape = shapes.for_layout(cluster_stack.cluster)
    database = f"schema_{session_tag}"
    first = _client(cluster_stack, cluster_stack.cluster.clickhouse_nodes[0])
    try:
        started = time.monotonic()
        applied = migrate.apply_migrations(first, database, shape=shape)
        took = time.monotonic() - started
        timings.append(f"schema: {len(applied)} migrations applied on the cluster in {took:.1f} s")
        yield cluster_stack, shape, database, applied
    finally:
        started = time.monotonic()
        migrate.drop_database(first, database, shape)
        timings.append(f"schema: its databases dropped on the cluster in {time.monotonic() - started:.1f} s")
        for node in cluster_stack.cluster.clickhouse_nodes:
            assert not _client(cluster_stack, node).execute(
                "SELECT name FROM system.databases WHERE startsWith(name, %(d)s)", {"d": database}), node.name


def _client(settings, node):
    return connect(cluster.server_settings(settings, node), database="default")


def _tables(client, *databases: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(database, table) -> (engine, engine_full)."""
    return {(d, n): (e, f) for d, n, e, f in client.execute(
        "SELECT database, name, engine, engine_full FROM system.tables WHERE database IN %(d)s", {"d": databases})}


def _columns(client, database: str, table: str) -> list[str]:
    return [name for (name,) in client.execute(
        "SELECT name FROM system.columns WHERE database = %(d)s AND table = %(t)s", {"d": database, "t": table})]


def test_every_migration_is_applied_on_a_fresh_database(schema):
    _, _, _, applied = schema
    assert applied == [m.path.name for m in migrate.migrations()]


def test_every_registry_table_is_replicated_on_all_four_servers_with_its_columns_and_distributed_by_its_key(schema):
    settings, shape, database, _ = schema
    private = f"{database}_private"
    nodes = settings.cluster.clickhouse_nodes
    assert len(nodes) == 4
    for node in nodes:
        client = _client(settings, node)
        assert dict(client.execute("SELECT macro, substitution FROM system.macros")) == {
            "shard": str(node.shard), "replica": node.name}
        tables = _tables(client, database, private)
        replicas = {table: (path, total) for table, path, total in client.execute(
            "SELECT table, zookeeper_path, total_replicas FROM system.replicas WHERE database IN %(d)s",
            {"d": (database, private)})}
        for table, columns in TABLE_COLUMNS.items():
            expected = [*columns, *FILLED_BY_CLICKHOUSE.get(table, ())]
            where = f"{node.name}: {table}"
            if table == PSEUDONYM_KEY:  # the project database reads the private one's through a Merge table
                assert tables[(database, table)][0] == "Merge", where
                stored, stored_in = table, private
            elif table in ON_EVERY_SERVER:
                stored, stored_in = table, database
            else:
                stored, stored_in = f"{table}{shapes.LOCAL_SUFFIX}", database
                assert tables[(database, table)] == (
                    "Distributed", f"Distributed({shape.cluster}, {database}, {stored}, {SHARDING_KEYS[table]})"), where
                assert _columns(client, database, table) == expected, where
                created_as = CREATED_AS.get(table, stored)
                assert replicas[stored] == (f"/clickhouse/tables/{node.shard}/{database}/{created_as}", 2), where
            engine = tables[(stored_in, stored)][0]
            assert engine.startswith("Replicated") and engine.endswith("MergeTree"), f"{where}: {engine}"
            assert _columns(client, stored_in, stored) == expected, where
            if table in ON_EVERY_SERVER:
                path = f"/clickhouse/tables/all/{stored_in}/{stored}"
                assert client.execute("SELECT zookeeper_path, total_replicas FROM system.replicas "
                                      "WHERE database = %(d)s AND table = %(t)s",
                                      {"d": stored_in, "t": stored}) == [(path, 4)], where
        dashboard = {name for (_, name) in _tables(client, f"{database}_dashboard")}
        assert {"post_minute", "post_hour", "posts", "subject_rollup"} <= dashboard, node.name


def test_rows_written_through_distributed_land_on_their_post_s_shard_and_read_back_exact_from_another_server(schema):
    settings, _, database, _ = schema
    nodes = settings.cluster.clickhouse_nodes
    writer, reader = _client(settings, nodes[0]), _client(settings, nodes[3])  # shard 1 writes, shard 2 reads
    rng = random.Random(SEED)
    first = [(post, NIGHT + timedelta(minutes=minute), rng.randrange(1, 500), rng.randrange(0, 50), b"", 1.0, 1)
             for post in range(1, POSTS + 1) for minute in range(MINUTES)]
    # A re-emit of a third of the windows with a higher version: FINAL keeps only it.
    again = [(post, window, views + 1000, impressions, sketch, estimate, 2)
             for post, window, views, impressions, sketch, estimate, _ in first[::3]]
    insert = f"INSERT INTO {database}.post_minute ({', '.join(POST_MINUTE_COLUMNS)}) VALUES"
    writer.execute(insert, first, settings=SYNC)
    writer.execute(insert, again, settings=SYNC)
    latest = {(post, window): (views, impressions) for post, window, views, impressions, *_ in first + again}
    expected = sorted((post, window.replace(tzinfo=None), views, impressions)
                      for (post, window), (views, impressions) in latest.items())
    read = (f"SELECT post_id, window_start, views, impressions FROM {database}.post_minute FINAL "
            "ORDER BY post_id, window_start")

    # A sync insert returns once one replica of each shard has the rows: the other may lag a moment.
    poll(lambda: reader.execute(read) == expected, 30, "the rows read back through Distributed with FINAL")
    assert reader.execute(read) == expected
    dashboard = f"SELECT count(), sum(views) FROM {database}_dashboard.post_minute FINAL"
    figures = [(len(expected), sum(views for _, _, views, _ in expected))]
    poll(lambda: _client(settings, nodes[2]).execute(dashboard) == figures, 30,
         "the dashboard's view reads every shard")

    # Each shard holds exactly its posts (the Distributed table's key: cityHash64(post_id) modulo 2).
    for node in nodes:
        slots = _client(settings, node).execute(
            f"SELECT DISTINCT cityHash64(post_id) % 2 FROM {database}.post_minute_local")
        assert slots == [(node.shard - 1,)], f"{node.name} holds another shard's posts: {slots}"

    # Each insert is noted once in the change feed, on the shard of its post, whichever replica took it.
    notes = f"SELECT count() FROM {database}.rollup_changes WHERE source = 'post_minute'"
    poll(lambda: reader.execute(notes) == [(len(first) + len(again),)], 30, "one change note a row written")
    for node in nodes:
        strays = _client(settings, node).execute(
            f"SELECT count() FROM {database}.rollup_changes_local WHERE key NOT IN "
            f"(SELECT post_id FROM {database}.post_minute_local)")
        assert strays == [(0,)], node.name

    # A subject whose posts are on both shards: its members are kept with their posts (subject_posts
    # by post id), so each shard answers for its own posts and the sum through Distributed is whole.
    members = list(range(1, POSTS + 1, 2))
    writer.execute(f"INSERT INTO {database}.subject_posts (subject_id, post_id, created_at, version) VALUES",
                   [("space-1", post, NIGHT, 1) for post in members], settings=SYNC)
    assert writer.execute("SELECT uniqExact(modulo(cityHash64(toUInt64(arrayJoin(%(members)s))), 2))",
                          {"members": members}) == [(2,)], "the subject's posts are on both shards"
    subject = (f"SELECT sum(views) FROM {database}.post_minute FINAL WHERE post_id IN "
               f"(SELECT post_id FROM {database}.subject_posts WHERE subject_id = 'space-1')")
    with pytest.raises(ServerException) as denied:  # 18.16's default: a Distributed table inside another's query
        reader.execute(subject)
    assert denied.value.code == 288, denied.value  # DISTRIBUTED_IN_JOIN_SUBQUERY_DENIED
    want = [(sum(views for post, _, views, _ in expected if post in members),)]
    assert poll(lambda: reader.execute(subject, settings={"distributed_product_mode": "local"}) == want, 30,
                "a subject's posts on both shards summed through Distributed")


def test_the_pseudonym_key_is_the_same_on_every_server(schema):
    settings, _, database, _ = schema
    keys = f"SELECT min(key), count() FROM {database}.{PSEUDONYM_KEY}"

    def one_key_everywhere():
        found = {_client(settings, node).execute(keys)[0] for node in settings.cluster.clickhouse_nodes}
        return len(found) == 1 and next(iter(found))[1] == 1

    poll(one_key_everywhere, 30, "one pseudonym key, replicated to all four servers")


def test_migrating_again_applies_nothing_and_changes_no_table(schema, timings):
    settings, shape, database, _ = schema
    nodes = settings.cluster.clickhouse_nodes
    databases = (database, f"{database}_private", f"{database}_dashboard")

    def state():
        return {node.name: sorted(_client(settings, node).execute(
            "SELECT database, name, engine_full, metadata_modification_time FROM system.tables "
            "WHERE database IN %(d)s", {"d": databases})) for node in nodes}

    before = state()
    started = time.monotonic()
    # From another server: the record of what was applied is on every server.
    assert migrate.apply_migrations(_client(settings, nodes[2]), database, shape=shape) == []
    timings.append(f"schema: migrating again (nothing pending) took {time.monotonic() - started:.1f} s")
    assert state() == before
