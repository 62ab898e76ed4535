"""The repairs on a ClickHouse cluster, as statements (no server): which statement runs on which server
and names which table. On one server every statement is as before; on a cluster the rebuild, retention
and erasure change the `_local` tables on one replica of each shard, and wait on every server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from clickhouse_driver.errors import NetworkError, ServerException

from pipelines.repair import backfill, erasure, retention
from pipelines.store import shapes, shards

SHAPE = shapes.ClusterShape("viewcount", "viewcount_servers")
HOUR = datetime(2024, 8, 12, 23, tzinfo=UTC)
ENGINE_FULL = ("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/post_minute_local', '{replica}', "
               "version) PARTITION BY toYYYYMMDDhh(window_start) ORDER BY (post_id, window_start) "
               "SETTINGS index_granularity = 8192")
CLUSTER = [(shard, replica, "127.0.0.1", 29000 + 2 * (shard - 1) + replica) for shard in (1, 2) for replica in (1, 2)]


class FakeConnection:
    def __init__(self, port: int) -> None:
        self.host, self.port, self.user, self.password, self.database = "127.0.0.1", port, "w", "p", "db"


class FakeClient:
    """Records statements; answers the few reads the repairs make with empty hours and nothing pending,
    its replicas writable and leading.
    `down`: every statement fails as an unreachable server's would; `fail_on`: a statement containing
    it fails with a server error."""

    def __init__(self, port: int = 29001, down: bool = False, fail_on: str | None = None,
                 partitions: tuple[str, ...] = ()) -> None:
        self.connection, self.settings = FakeConnection(port), {}
        self.down, self.fail_on, self.partitions = down, fail_on, partitions
        self.read_only, self.leads = False, True  # its replicas' state (system.replicas)
        self.statements: list[str] = []
        self.disconnected = False

    def execute(self, statement: str, params=None, settings=None):
        if self.down:
            raise NetworkError(f"Code: 210. Connection refused (127.0.0.1:{self.connection.port})")
        statement = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        if self.fail_on and self.fail_on in statement:
            raise ServerException(f"refused: {self.fail_on}", code=999)
        self.statements.append(statement)
        if "FROM system.clusters" in statement:
            return CLUSTER
        if "FROM system.replicas" in statement:
            return [(table, int(self.read_only), int(self.leads)) for table in params["tables"]]
        if "engine_full" in statement:
            return [(ENGINE_FULL,)]
        if "system.parts" in statement:  # the archive's hourly partitions only
            return [(p,) for p in self.partitions] if params["table"].startswith("events_raw") else []
        if statement.startswith("SELECT count()") or "system.mutations" in statement:
            return [(0,)]
        return []

    def execute_iter(self, statement: str, params=None, settings=None):
        return iter(self.execute(statement, params, settings))

    def disconnect(self) -> None:
        self.disconnected = True


def verbs(client: FakeClient) -> list[str]:
    """Each statement's first words and the table it names (enough to tell what ran where)."""
    return [" ".join(s.split()[:3]) for s in client.statements]


@pytest.fixture()
def cluster_of_fakes(monkeypatch):
    """Every server of CLUSTER as a FakeClient, by port; `connect_like` hands them out."""
    servers = {port: FakeClient(port) for *_, port in CLUSTER}
    monkeypatch.setattr(shards, "connect_like", lambda client, host, port: servers[port])
    monkeypatch.setattr(backfill, "sibling", lambda client: client)
    return servers


def test_a_table_is_changed_where_its_rows_are_stored():
    assert shapes.stored_table("post_minute", None) == "post_minute"
    assert shapes.stored_table("post_minute", SHAPE) == "post_minute_local"
    assert shapes.stored_table("events_raw", SHAPE) == "events_raw_local"
    assert shapes.stored_table("erased_viewers", SHAPE) == "erased_viewers"  # on every server, no _local


def test_a_shards_staging_table_takes_the_engine_unreplicated():
    assert shapes.unreplicated_engine(ENGINE_FULL) == (
        "ReplacingMergeTree(version) PARTITION BY toYYYYMMDDhh(window_start) ORDER BY (post_id, window_start) "
        "SETTINGS index_granularity = 8192")
    assert shapes.unreplicated_engine("ReplicatedMergeTree('/p', '{replica}') ORDER BY x") == "MergeTree() ORDER BY x"
    with pytest.raises(shapes.ShapeError):
        shapes.unreplicated_engine("Distributed(viewcount, db, post_minute_local, cityHash64(post_id))")


def test_on_one_server_the_rebuild_runs_the_statements_it_always_ran(monkeypatch):
    monkeypatch.setattr(backfill, "sibling", lambda client: client)
    client = FakeClient()
    backfill.rebuild_hour(client, HOUR, version=5)
    staging = {t: f"{t}_staging_2024081223" for t in ("post_minute", "post_hour", "post_surface_minute")}
    assert verbs(client) == [
        *[verb for _ in staging for verb in ("DROP TABLE IF", "CREATE TABLE IF")],
        "SELECT count() FROM", "SELECT post_id, toStartOfMinute(event_time)",  # the hour's size; its minutes
        f"INSERT INTO {staging['post_surface_minute']}", "SELECT count() FROM",
        *[f"ALTER TABLE {table}" for table in staging], *["DROP TABLE IF"] * 3]
    text = "\n".join(client.statements)
    assert "_local" not in text and "ON CLUSTER" not in text and "SYNC" not in text
    for table, name in staging.items():
        assert f"CREATE TABLE IF NOT EXISTS {name} AS {table}\n" in text + "\n"
        assert f"ALTER TABLE {table} REPLACE PARTITION %(partition)s FROM {name}" in text
    assert text.count("FROM events_raw FINAL") == 2 and "SELECT count() FROM events_raw\n" in text


def test_on_a_cluster_each_shard_rebuilds_its_own_posts_on_one_replica(cluster_of_fakes):
    coordinator = FakeClient()
    backfill.rebuild_hour(coordinator, HOUR, version=5, shape=SHAPE)
    assert [s.split()[0] for s in coordinator.statements] == ["SELECT"]  # system.clusters only
    first, second = cluster_of_fakes[29001], cluster_of_fakes[29003]  # each shard's first replica
    assert cluster_of_fakes[29002].statements == cluster_of_fakes[29004].statements == []
    for replica in (first, second):
        text = "\n".join(replica.statements)
        assert "SYSTEM SYNC REPLICA events_raw_local" in text and "SYSTEM SYNC REPLICA erased_viewers" in text
        assert ("CREATE TABLE IF NOT EXISTS post_minute_staging_2024081223 AS post_minute_local ENGINE = "
                "ReplacingMergeTree(version) PARTITION BY") in text
        assert "FROM events_raw_local FINAL" in text and "FROM events_raw FINAL" not in text
        for table in ("post_minute", "post_hour", "post_surface_minute"):
            assert f"ALTER TABLE {table}_local REPLACE PARTITION %(partition)s FROM {table}_staging_2024081223" in text
        assert replica.statements[-1] == "DROP TABLE IF EXISTS post_surface_minute_staging_2024081223"
        assert replica.disconnected
    # Every shard is filled before any is swapped in.
    swaps = [i for i, s in enumerate(first.statements) if "REPLACE PARTITION" in s]
    assert not any("REPLACE PARTITION" in s for s in second.statements[:-6]) and swaps


def test_a_replica_that_is_down_leaves_its_shard_to_the_other(cluster_of_fakes):
    cluster_of_fakes[29003].down = True
    backfill.rebuild_hour(FakeClient(), HOUR, version=5, shape=SHAPE)
    assert any("REPLACE PARTITION" in s for s in cluster_of_fakes[29004].statements)
    assert cluster_of_fakes[29003].statements == []


def test_a_whole_shard_down_stops_the_rebuild_before_anything_changes(cluster_of_fakes):
    cluster_of_fakes[29003].down = cluster_of_fakes[29004].down = True
    with pytest.raises(shards.ShardUnavailable, match=r"shard 2: .*29003.*unreachable.*29004.*unreachable"):
        backfill.rebuild_hour(FakeClient(), HOUR, version=5, shape=SHAPE)
    assert not any(s.startswith(("CREATE", "ALTER", "INSERT")) for s in cluster_of_fakes[29001].statements)
    assert cluster_of_fakes[29001].disconnected


def test_a_swap_failing_on_one_shard_after_another_is_no_success(cluster_of_fakes):
    cluster_of_fakes[29003].fail_on = "REPLACE PARTITION"
    with pytest.raises(backfill.ShardsNotAllSwapped, match="swapped in on .*29001.* but failed on .*29003"):
        backfill.rebuild_hour(FakeClient(), HOUR, version=5, shape=SHAPE)
    for port in (29001, 29003):  # staging dropped everywhere all the same
        assert cluster_of_fakes[port].statements[-1].startswith("DROP TABLE IF EXISTS post_surface_minute_staging")


def test_retention_drops_each_shards_partitions_of_the_local_tables(cluster_of_fakes):
    cluster_of_fakes[29001].partitions = ("2024081222", "2024081223")
    cluster_of_fakes[29003].partitions = ("2024081223",)
    now = datetime(2024, 11, 20, tzinfo=UTC)
    report = retention.drop_expired(FakeClient(), 90, now, shape=SHAPE)
    drops = {port: [s for s in c.statements if "DROP PARTITION" in s] for port, c in cluster_of_fakes.items()}
    assert drops[29001] == ["ALTER TABLE events_raw_local DROP PARTITION %(partition)s"] * 2
    assert drops[29003] == ["ALTER TABLE events_raw_local DROP PARTITION %(partition)s"]
    assert drops[29002] == drops[29004] == []
    assert report.dropped["events_raw"] == ["2024081222", "2024081223"]


def test_retention_on_one_server_is_as_before():
    client = FakeClient(partitions=("2024081223",))
    retention.drop_expired(client, 90, datetime(2024, 11, 20, tzinfo=UTC))
    assert [s for s in client.statements if "DROP" in s] == ["ALTER TABLE events_raw DROP PARTITION %(partition)s"]
    assert "_local" not in "\n".join(client.statements)


def test_erasure_deletes_from_the_local_tables_on_a_cluster_only():
    assert erasure._sql("delete_events").endswith("ALTER TABLE events_raw DELETE WHERE viewer_id IN %(viewer_ids)s\n")
    assert "ALTER TABLE events_raw_local DELETE" in erasure._sql("delete_events", SHAPE)
    assert "ALTER TABLE space_presence_local DELETE" in erasure._sql("delete_presence", SHAPE)
    assert "ALTER TABLE dead_letters_local\nDELETE" in erasure._sql("delete_dead_letters", SHAPE)
    assert "%(" not in erasure._sql("delete_events", SHAPE).replace("%(viewer_ids)s", "")


def test_the_wait_for_an_erasure_reads_every_server(cluster_of_fakes):
    erasure.wait_for_mutations(FakeClient(), "events_raw", 5, SHAPE)
    for client in cluster_of_fakes.values():
        assert [s for s in client.statements if "system.mutations" in s], client.connection.port
    cluster_of_fakes[29004].down = True
    with pytest.raises(erasure.ErasureTimeout, match="29004.*run the erasure again"):
        erasure.wait_for_mutations(FakeClient(), "events_raw", 5, SHAPE)


def test_a_read_only_replica_is_passed_by(cluster_of_fakes):
    cluster_of_fakes[29001].read_only = True
    with shards.one_replica_per_shard(FakeClient(), SHAPE, ["post_minute_local"]) as chosen:
        assert [r.server.port for r in chosen] == [29002, 29003]


def test_retention_drops_on_the_replica_leading_the_table(cluster_of_fakes):
    # 18.16 sends a DROP PARTITION made elsewhere to the leader as user `default` (code 195 here).
    cluster_of_fakes[29001].leads = cluster_of_fakes[29004].leads = False
    for port in (29001, 29002, 29003, 29004):
        cluster_of_fakes[port].partitions = ("2024081223",)
    retention.drop_expired(FakeClient(), 90, datetime(2024, 11, 20, tzinfo=UTC), shape=SHAPE)
    dropped = [port for port, c in cluster_of_fakes.items() if any("DROP PARTITION" in s for s in c.statements)]
    assert dropped == [29002, 29003]
    cluster_of_fakes[29002].leads = False  # no leader in shard 1 (an election under way): an error, no drop
    with pytest.raises(shards.ShardUnavailable, match=r"shard 1: .*not the leader of events_raw_local"):
        retention.drop_expired(FakeClient(), 90, datetime(2024, 11, 20, tzinfo=UTC), shape=SHAPE)
