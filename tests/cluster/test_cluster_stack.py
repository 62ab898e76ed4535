"""The cluster stack (make cluster-up) keeps its promises with a node down: Kafka takes acks=all
writes with one broker killed and the broker rejoins; ClickHouse's replicated tables, made ON
CLUSTER, answer through Distributed with one replica killed, and the replica catches up.

Not part of `make test`: `make test-cluster` runs it (docs/scale-out.md). It brings the cluster up
itself, or uses the one running, and stops only what it started (tests/cluster/conftest.py). Timings
and the cluster's resident memory are printed at the end of the module."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from string import Template

import pytest

from pipelines import cluster
from tests.support import poll

pytestmark = pytest.mark.cluster
SEED = 2107
RECORDS = 4000  # per half of the Kafka test
POSTS, MINUTES = 500, 6

# The smoke tables: the shapes docs/scale-out.md describes (a replicated rollup, a Distributed
# table over it on every server); identifiers are this session's own.
DATABASE = Template("CREATE DATABASE IF NOT EXISTS $database ON CLUSTER $cluster")
LOCAL = Template("""
    CREATE TABLE $database.views_local ON CLUSTER $cluster
    (post_id UInt64, window_start DateTime, views UInt64, version UInt64)
    ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/$database/views_local', '{replica}', version)
    PARTITION BY toYYYYMMDD(window_start) ORDER BY (post_id, window_start)""")
DISTRIBUTED = Template("""
    CREATE TABLE $database.views ON CLUSTER $cluster AS $database.views_local
    ENGINE = Distributed($cluster, $database, views_local, cityHash64(post_id))""")
DROP = Template("DROP DATABASE IF EXISTS $database ON CLUSTER $cluster")
# A column added everywhere: the replicated tables on the shards' cluster, the Distributed tables
# (one on every server) on the cluster of every server as its own shard: 18.16 refuses the first
# for a Distributed table (code 371).
ADD_LOCAL = Template("ALTER TABLE $database.views_local ON CLUSTER $cluster ADD COLUMN impressions UInt64 DEFAULT 0")
ADD_DISTRIBUTED = Template("ALTER TABLE $database.views ON CLUSTER $servers ADD COLUMN impressions UInt64 DEFAULT 0")


def _meanwhile_false(condition):
    """condition, reading a refused connection or a metadata timeout as "not yet" (for poll)."""
    def check():
        try:
            return condition()
        except Exception:  # noqa: BLE001 - a node still starting: poll again
            return False
    return check


def _kill_9(service) -> None:
    """kill -9, then wait until it is gone (reaped if it is this process's child)."""
    pid = service.running_pid()
    assert pid, f"{service.name} is not running"
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return service.running_pid() is None

    poll(gone, 10, f"{service.name} gone after kill -9")


def test_a_second_cluster_up_with_everything_running_starts_nothing(cluster_stack, timings):
    services = [cluster.zookeeper_service(cluster_stack), *cluster.kafka_services(cluster_stack).values(),
                *cluster.clickhouse_services(cluster_stack).values()]
    before = [service.running_pid() for service in services]
    started = time.monotonic()
    messages = cluster.up(cluster_stack)
    took = time.monotonic() - started
    timings.append(f"second cluster up (everything running) in {took:.1f} s")
    assert [service.running_pid() for service in services] == before
    assert not any(" started " in line for line in messages), messages
    assert took < 30, messages


def test_every_node_listens_on_loopback_only_and_on_its_ports(cluster_stack):
    """ZooKeeper, the Kafka nodes, the ClickHouse servers, and the Flink session cluster: its
    JobManager (RPC, blob server, REST, metrics RPC) and TaskManagers (RPC, metrics RPC, shuffle
    server), every socket of their process trees (stack/flink/config.yaml.template)."""
    from pipelines.stream import flink_cluster
    from tests.sockets import assert_loopback_only, process_tree

    ports: dict[str, set[int]] = {}
    for service, port, _ in cluster._ports(cluster_stack):
        if service is not None:
            ports.setdefault(service.name, set()).add(port)
    services = [cluster.zookeeper_service(cluster_stack), *cluster.kafka_services(cluster_stack).values(),
                *cluster.clickhouse_services(cluster_stack).values()]
    for service in services:
        assert_loopback_only(service.name, {service.running_pid()}, ports[service.name])
    flink = flink_cluster.pids(cluster_stack)
    assert len(flink) >= 1 + cluster_stack.cluster.taskmanagers, flink  # the JobManager and each TaskManager
    assert_loopback_only("the Flink session cluster", {p for pid in flink for p in process_tree(pid)},
                         set(flink_cluster.ports(cluster_stack).values()))


def test_a_topic_of_three_copies_takes_acks_all_writes_with_a_broker_killed_and_the_broker_rejoins(
        cluster_stack, session_tag, timings):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    layout = cluster_stack.cluster
    bootstrap = layout.kafka_bootstrap
    topic = f"smoke{session_tag}.views"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=layout.replication_factor)],
                        operation_timeout=30)[topic].result()
    rng = random.Random(SEED)
    records = [(f"post-{rng.randrange(POSTS)}-{i}".encode(), rng.randbytes(64)) for i in range(2 * RECORDS)]
    failures: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "delivery.timeout.ms": 120_000})

    def produce(batch) -> None:
        for key, value in batch:
            producer.produce(topic, value, key, on_delivery=lambda err, _msg: err and failures.append(str(err)))
            producer.poll(0)
        assert producer.flush(150) == 0, "records still unacknowledged"

    try:
        produce(records[:RECORDS])
        leader = poll(_meanwhile_false(lambda: admin.list_topics(topic, timeout=5).topics[topic].partitions[0]
                                       .leader), 30, "partition 0's leader")
        victim = cluster.kafka_services(cluster_stack)[leader]
        _kill_9(victim)
        started = time.monotonic()
        produce(records[RECORDS:])
        timings.append(f"kafka: {RECORDS} acks=all records with {victim.name} (partition 0's leader) killed: "
                       f"acknowledged in {time.monotonic() - started:.1f} s")
        assert failures == []

        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"smoke{session_tag}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topic])
        read: list[tuple[bytes, bytes]] = []

        def everything_read() -> bool:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                read.append((message.key(), message.value()))
            return len(read) >= len(records)

        poll(everything_read, 120, "every acknowledged record read back", interval_s=0)
        consumer.close()
        assert sorted(read) == sorted(records)

        started = time.monotonic()
        cluster.start_kafka_nodes(cluster_stack)

        def in_every_isr() -> bool:
            partitions = admin.list_topics(topic, timeout=5).topics[topic].partitions.values()
            return all(leader in partition.isrs for partition in partitions)

        poll(_meanwhile_false(in_every_isr), 120, f"{victim.name} back in the ISR of every partition")
        timings.append(f"kafka: {victim.name} restarted and back in every ISR in {time.monotonic() - started:.1f} s")
    finally:
        producer.flush(10)
        admin.delete_topics([topic], operation_timeout=30)[topic].result()


def test_replicated_tables_on_cluster_answer_through_distributed_with_a_replica_killed_and_it_catches_up(
        cluster_stack, session_tag, timings):
    from pipelines.store.clickhouse import connect

    layout = cluster_stack.cluster
    names = {"database": f"smoke_{session_tag}", "cluster": layout.clickhouse_cluster}
    nodes = layout.clickhouse_nodes
    services = cluster.clickhouse_services(cluster_stack)

    def client(node):
        return connect(cluster.server_settings(cluster_stack, node), database="default")

    def rows(first_post: int) -> list[tuple]:
        rng = random.Random(SEED + first_post)
        start = 1_723_492_020  # 2024-08-12 19:47 UTC, the reference night
        return [(post, start + 60 * minute, rng.randrange(1, 1000), 1)
                for post in range(first_post, first_post + POSTS) for minute in range(MINUTES)]

    def local(node) -> tuple[int, int]:
        return client(node).execute(f"SELECT count(), sum(views) FROM {names['database']}.views_local")[0]

    def through_distributed(node) -> tuple[int, int]:
        return client(node).execute(f"SELECT count(), sum(views) FROM {names['database']}.views FINAL")[0]

    def replicas_agree(expected: tuple[int, int]) -> bool:
        by_shard: dict[int, set] = {}
        for node in nodes:
            if services[node].running_pid():
                by_shard.setdefault(node.shard, set()).add(local(node))
        if any(len(states) != 1 for states in by_shard.values()):
            return False
        totals = [next(iter(states)) for states in by_shard.values()]
        return (sum(c for c, _ in totals), sum(s for _, s in totals)) == expected and all(c for c, _ in totals)

    first = client(nodes[0])
    first.execute(DATABASE.substitute(names))
    try:
        first.execute(LOCAL.substitute(names))
        first.execute(DISTRIBUTED.substitute(names))
        batch = rows(0)
        first.execute(f"INSERT INTO {names['database']}.views (post_id, window_start, views, version) VALUES",
                      batch, settings={"insert_distributed_sync": 1})
        expected = (len(batch), sum(r[2] for r in batch))
        poll(lambda: replicas_agree(expected), 60, "both replicas of each shard hold its rows, the shards all of them")
        for node in nodes:
            assert through_distributed(node) == expected, node.name

        # Shard 1's first replica: the server the cluster's settings (every viewcount command's, the
        # dashboards API's) name first. Read from shard 2.
        victim, reader = nodes[0], nodes[2]
        _kill_9(services[victim])
        started = time.monotonic()
        for node in nodes:
            if node != victim:
                assert through_distributed(node) == expected, node.name
        timings.append(f"clickhouse: {victim.name} killed: reads through Distributed from the 3 others answered "
                       f"in {time.monotonic() - started:.2f} s")
        # A client of the cluster's settings goes on with the next server its URL names (alt_hosts),
        # where the Distributed table reads every shard, exactly.
        # (The dashboards API connects with the same URL: tests/unit/test_cluster_config.py.)
        failover = connect(cluster.cluster_settings(cluster_stack), database="default")
        assert dict(failover.execute("SELECT macro, substitution FROM system.macros")) == {
            "shard": str(nodes[1].shard), "replica": nodes[1].name}
        assert failover.execute(f"SELECT count(), sum(views) FROM {names['database']}.views FINAL")[0] == expected
        failover.disconnect()
        more = rows(POSTS)
        client(reader).execute(f"INSERT INTO {names['database']}.views (post_id, window_start, views, version) VALUES",
                               more, settings={"insert_distributed_sync": 1})
        expected = (expected[0] + len(more), expected[1] + sum(r[2] for r in more))
        # Written to one replica per shard: shard 2's other replica may answer a moment without them.
        poll(lambda: through_distributed(reader) == expected, 30, "the rows written with a replica down, read back")

        started = time.monotonic()
        cluster.start_clickhouse_nodes(cluster_stack)
        restarted = time.monotonic() - started
        sibling = next(n for n in nodes if n.shard == victim.shard and n != victim)
        poll(_meanwhile_false(lambda: local(victim) == local(sibling)), 180, f"{victim.name} catches up with "
             f"{sibling.name}", interval_s=1)
        timings.append(f"clickhouse: {victim.name} restarted in {restarted:.1f} s, caught up "
                       f"{time.monotonic() - started:.1f} s after the restart began")
        assert replicas_agree(expected)
        assert through_distributed(victim) == expected
    finally:
        cluster.start_clickhouse_nodes(cluster_stack)  # DDL ON CLUSTER waits for every server
        client(nodes[0]).execute(DROP.substitute(names))  # a new connection: `first`'s server was killed


def test_a_column_added_on_cluster_reaches_every_replica_and_every_distributed_table(cluster_stack, session_tag):
    from pipelines.store.clickhouse import connect

    layout = cluster_stack.cluster
    names = {"database": f"smoke_alter_{session_tag}", "cluster": layout.clickhouse_cluster,
             "servers": layout.clickhouse_servers_cluster}
    nodes = layout.clickhouse_nodes

    def client(node):
        return connect(cluster.server_settings(cluster_stack, node), database="default")

    first = client(nodes[0])
    first.execute(DATABASE.substitute(names))
    try:
        first.execute(LOCAL.substitute(names))
        first.execute(DISTRIBUTED.substitute(names))
        first.execute(ADD_LOCAL.substitute(names))
        first.execute(ADD_DISTRIBUTED.substitute(names))
        columns = "SELECT name FROM system.columns WHERE database = %(database)s AND table = %(table)s"
        for node in nodes:
            for table in ("views_local", "views"):
                poll(lambda node=node, table=table: "impressions" in {
                    name for (name,) in client(node).execute(columns, {"database": names["database"], "table": table})},
                    60, f"impressions in {node.name}'s {table}")
        client(nodes[3]).execute(f"INSERT INTO {names['database']}.views (post_id, window_start, views, version, "
                                 "impressions) VALUES", [(7, 1_723_492_020, 3, 1, 5)],
                                 settings={"insert_distributed_sync": 1})
        # A sync insert returns once one replica of the shard has the row: the other may answer a
        # read for a moment without it.
        poll(lambda: client(nodes[0]).execute(f"SELECT sum(impressions) FROM {names['database']}.views")[0][0] == 5,
             30, "the new column's value read back through Distributed")
    finally:
        first.execute(DROP.substitute(names))
