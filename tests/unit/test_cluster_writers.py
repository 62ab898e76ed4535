"""The pipeline's writers on a ClickHouse cluster, as configuration (no server): ClickHouse's Kafka
consumers on every server writing into the Distributed tables, the writer's session settings, and
nothing of either on one server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.config import Settings
from pipelines.store import shapes
from pipelines.store.clickhouse import CLUSTER_WRITER_SETTINGS, connect
from pipelines.stream import streams


@pytest.fixture()
def one_server() -> Settings:
    return replace(Settings.from_env(), clickhouse_cluster="", clickhouse_servers_cluster="",
                   clickhouse_passwords=(("writer", "w"), ("analyst", "a"), ("dashboard", "d")))


@pytest.fixture()
def on_cluster(one_server) -> Settings:
    return replace(one_server, clickhouse_cluster="viewcount")


@pytest.mark.parametrize("output", streams.LOADED_BY_CLICKHOUSE, ids=lambda o: o.name)
def test_a_consumer_is_on_every_server_and_writes_into_the_distributed_table(output):
    shape = shapes.ClusterShape("viewcount", "viewcount_servers")
    queue = streams._queue_sql(output, "db_queues", shape)
    view = streams.view_sql(output, "db_queues", "db", shape)
    assert f"CREATE TABLE IF NOT EXISTS db_queues.{output.name}_queue ON CLUSTER viewcount (" in queue
    assert (f"CREATE MATERIALIZED VIEW IF NOT EXISTS db_queues.{output.name}_loader ON CLUSTER viewcount "
            f"TO db.{output.table} AS\n") in view  # the public name: the Distributed table sends each row to its shard
    assert f"{output.table}{shapes.LOCAL_SUFFIX}" not in view


@pytest.mark.parametrize("output", streams.LOADED_BY_CLICKHOUSE, ids=lambda o: o.name)
def test_on_one_server_a_consumer_is_as_before(output):
    assert "ON CLUSTER" not in streams._queue_sql(output, "db_queues") + streams.view_sql(output, "db_queues", "db")


def test_the_writer_inserts_synchronously_and_joins_shard_by_shard_on_a_cluster_only(one_server, on_cluster):
    assert CLUSTER_WRITER_SETTINGS == {"insert_distributed_sync": 1, "distributed_product_mode": "local"}
    assert connect(on_cluster, check=False).settings == CLUSTER_WRITER_SETTINGS  # sent with every query
    assert connect(one_server, check=False).settings == {}
    # The read-only users take no settings (readonly 1 refuses any): theirs are their profiles'.
    for role in ("analyst", "dashboard"):
        assert connect(on_cluster, role=role, check=False).settings == {}
