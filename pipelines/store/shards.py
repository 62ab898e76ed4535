"""The servers of a ClickHouse cluster as they list themselves (system.clusters), and the one replica of
each shard that a repair's in-place change runs on (docs/scale-out.md, "The repairs on a cluster").

A REPLACE PARTITION, DROP PARTITION (`drop_partitions`, on one server too) or DELETE of a sharded
table names its `_local` table
(shapes.stored_table) on one replica of each shard; ZooKeeper carries it to the shard's other
replicas. The servers come from the cluster's own system.clusters, as the Distributed tables find
them, so a real cluster not started by our stack works the same as the loopback one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pipelines.config import REPO_ROOT
from pipelines.store.clickhouse import connect_like, is_transient
from pipelines.store.shapes import LOCAL_SUFFIX, ClusterShape, stored_table
from pipelines.store.tables import WRITABLE_TABLES

SQL_DIR = REPO_ROOT / "sql" / "cluster"
PARTITIONS_SQL_DIR = REPO_ROOT / "sql" / "partitions"
# How long a replica may take to fetch what its shard's log holds before a repair reads it.
SYNC_TIMEOUT_S = 120


class ShardUnavailable(RuntimeError):
    """No replica of a shard can take a repair: raised before the repair changes anything."""


@dataclass(frozen=True)
class Server:
    shard: int
    replica: int  # its place in its shard, in the order of remote_servers (1 first)
    host: str
    port: int

    def describe(self) -> str:
        return f"ClickHouse at {self.host}:{self.port} (shard {self.shard}, replica {self.replica})"


class ShardReplica(NamedTuple):
    server: Server
    client: object  # a clickhouse-driver Client on that server, as the repair's user, in its database


def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def _stored(table: str) -> str:
    # Table names go into SQL text (SYSTEM SYNC REPLICA takes no parameter): the registry's only.
    if table.removesuffix(LOCAL_SUFFIX) not in WRITABLE_TABLES:
        raise ValueError(f"{table!r} is not a table of the registry (pipelines/store/tables.py) nor its _local table")
    return table


def servers(client, shape: ClusterShape) -> list[Server]:
    """Every server of the shape's cluster, by shard and replica, as the server `client` is on lists them."""
    found = [Server(*row) for row in client.execute(_sql("servers"), {"cluster": shape.cluster})]
    if not found:
        c = client.connection
        raise ShardUnavailable(f"ClickHouse at {c.host}:{c.port} knows no cluster {shape.cluster!r} "
                               "(system.clusters): set VIEWCOUNT_CLICKHOUSE_CLUSTER to one of its remote_servers")
    return found


def _unusable(client, tables: Sequence[str], leader: bool = False) -> str | None:
    """Why a replica cannot take an in-place change of these replicated tables now, or None: it
    answers, holds a replica of each, none of them read-only (no ZooKeeper session: a restarted
    replica until its old session expires, or ZooKeeper down), and with `leader` it leads each."""
    try:
        if not tables:
            client.execute("SELECT 1")
            return None
        state = {t: (read_only, is_leader) for t, read_only, is_leader in client.execute(
            _sql("replica_state"), {"tables": tuple(_stored(t) for t in tables)})}
    except Exception as exc:  # noqa: BLE001 - transient: the reason; anything else is a bug, raised
        if not is_transient(exc):
            raise
        return f"unreachable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if missing := [t for t in tables if t not in state]:
        return f"no replicated table {', '.join(missing)} in database {client.connection.database}"
    if read_only := [t for t, (ro, _) in state.items() if ro]:
        return f"read-only (no ZooKeeper session) for {', '.join(read_only)}"
    if leader and (led_elsewhere := [t for t, (_, leads) in state.items() if not leads]):
        return f"not the leader of {', '.join(led_elsewhere)}"
    return None


@contextlib.contextmanager
def one_replica_per_shard(client, shape: ClusterShape, tables: Sequence[str] = (),
                          leader: bool = False) -> Iterator[list[ShardReplica]]:
    """A connection to one replica of each shard, the first in the cluster's order that answers and
    can change `tables` (their `_local` names): the replica the servers' `load_balancing = in_order`
    writes and reads first, so what it holds is what readers see. With `leader`, the replica that
    leads its shard's replicas of every one of `tables` (ZooKeeper elects one among the live
    replicas): 18.16 runs a DROP PARTITION only there. Raises ShardUnavailable, naming each shard
    without one and why, before the caller changes anything. Closed at the end."""
    by_shard: dict[int, list[Server]] = {}
    for server in servers(client, shape):
        by_shard.setdefault(server.shard, []).append(server)
    chosen: list[ShardReplica] = []
    missing: list[str] = []
    try:
        for shard, members in sorted(by_shard.items()):
            reasons = []
            for server in members:
                replica = connect_like(client, server.host, server.port)
                reason = _unusable(replica, tables, leader)
                if reason is None:
                    chosen.append(ShardReplica(server, replica))
                    break
                replica.disconnect()
                reasons.append(f"{server.describe()}: {reason}")
            else:
                missing.append(f"shard {shard}: " + "; ".join(reasons))
        if missing:
            raise ShardUnavailable("no replica of a shard can take the change, so nothing was changed: "
                                   + " | ".join(missing) + ". Bring one replica of each shard back "
                                   "(the cluster stack: make cluster-up) and run it again")
        yield chosen
    finally:
        for replica in chosen:
            replica.client.disconnect()


@contextlib.contextmanager
def every_server(client, shape: ClusterShape) -> Iterator[list[ShardReplica]]:
    """A connection to every server of the cluster; ShardUnavailable naming those that do not answer."""
    connected: list[ShardReplica] = []
    try:
        down = []
        for server in servers(client, shape):
            replica = connect_like(client, server.host, server.port)
            reason = _unusable(replica, ())
            if reason is None:
                connected.append(ShardReplica(server, replica))
            else:
                replica.disconnect()
                down.append(f"{server.describe()}: {reason}")
        if down:
            raise ShardUnavailable(" | ".join(down))
        yield connected
    finally:
        for replica in connected:
            replica.client.disconnect()


def sync(replica: ShardReplica, tables: Sequence[str], timeout_s: int = SYNC_TIMEOUT_S) -> None:
    """Wait until the replica holds every part its shard's replication log names for these
    replicated tables (SYSTEM SYNC REPLICA): a replica that was down, or behind its sibling, reads
    complete afterwards. A part that only a stopped replica holds cannot be fetched: the wait then
    ends with an error at the query's receive_timeout (not tried here), and the repair with it."""
    for table in tables:
        replica.client.execute(_sql("sync_replica").replace("%(table)s", _stored(table)),
                               settings={"receive_timeout": timeout_s})


def drop_partitions(client, table: str, shape: ClusterShape | None,
                    expired: Callable[[str], bool]) -> list[tuple[str, list[str]]]:
    """Drop the partitions of `table` (one of the registry's) that `expired` says are past, where its
    rows are stored: on one server the table itself; on a cluster each shard's `_local` table, on the
    replica leading it (18.16 forwards a DROP PARTITION made on another replica, and an ON CLUSTER
    one, to the leader as user `default`, which our users.xml refuses: code 195), whence ZooKeeper
    carries it to the shard's other replica. Returns (where, the partitions dropped there, in order)
    for each server that dropped some; `where` is "" on one server, " on <the server>" on a cluster.
    A shard with no replica leading the table: ShardUnavailable before anything is dropped."""
    stored = _stored(stored_table(table, shape))
    if shape is None:
        return _drop_on(client, stored, expired, "")
    with one_replica_per_shard(client, shape, [stored], leader=True) as replicas:
        return [dropped for replica in replicas
                for dropped in _drop_on(replica.client, stored, expired, f" on {replica.server.describe()}")]


def _drop_on(client, stored: str, expired: Callable[[str], bool], where: str) -> list[tuple[str, list[str]]]:
    partitions = (PARTITIONS_SQL_DIR / "partitions.sql").read_text()
    drop = (PARTITIONS_SQL_DIR / "drop_partition.sql").read_text().replace("%(table)s", stored)
    gone = [p for (p,) in client.execute(partitions, {"table": stored}) if expired(p)]
    for partition in gone:
        client.execute(drop, {"partition": int(partition)})  # its key value, a number (drop_partition.sql)
    return [(where, gone)] if gone else []
