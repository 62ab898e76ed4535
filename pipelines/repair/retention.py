"""Retention of the raw tables: rows older than `Settings.raw_retention_days` are dropped a partition
at a time; the rollups stay.

events_raw and space_presence are partitioned by UTC hour of event time (2024081223), dead_letters by
the day it was loaded (20240812); a partition goes when its whole period ended before the cutoff.
An hour older than the cutoff can no longer be rebuilt from the archive (it would be rebuilt from
nothing): the ledger's repair skips such hours (`pipelines.repair.ledger.repair`).

On a ClickHouse cluster (a `shape`) each shard drops its own expired partitions of the `_local`
tables, on the replica leading it (pipelines/store/shards.py); a replicated DROP PARTITION reaches
the shard's other replica through ZooKeeper (docs/scale-out.md, "The repairs on a cluster").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipelines.store import shapes, shards
from pipelines.store.tables import DEAD_LETTERS, EVENTS_RAW, SPACE_PRESENCE

log = logging.getLogger("viewcount.retention")
# Each raw table: its partition's format (strptime) and the length of the period it covers.
RAW_PARTITIONS = {
    EVENTS_RAW: ("%Y%m%d%H", timedelta(hours=1)),
    SPACE_PRESENCE: ("%Y%m%d%H", timedelta(hours=1)),
    DEAD_LETTERS: ("%Y%m%d", timedelta(days=1)),
}


def cutoff(retention_days: int, now: datetime | None = None) -> datetime | None:
    """The oldest moment raw rows are kept from (aware, UTC), or None when retention is off (0)."""
    if retention_days <= 0:
        return None
    return (now or datetime.now(UTC)) - timedelta(days=retention_days)


def partition_end(table: str, partition: str) -> datetime:
    """When the partition's period ends (aware, UTC)."""
    fmt, length = RAW_PARTITIONS[table]
    return datetime.strptime(partition, fmt).replace(tzinfo=UTC) + length


@dataclass
class RetentionReport:
    cutoff: datetime | None
    dropped: dict[str, list[str]] = field(default_factory=dict)  # table -> partitions dropped


def drop_expired(client, retention_days: int, now: datetime | None = None,
                 shape: shapes.ClusterShape | None = None) -> RetentionReport:
    """Drop every raw partition whose period ended before the cutoff. On a cluster, table by table on
    each shard's leading replica of it: 18.16 sends a DROP PARTITION made on another replica to the
    leader as user `default` (refused by our users.xml: code 195), and so does an `ON CLUSTER` one. A
    shard with no replica that can take it: shards.ShardUnavailable before that table is touched (a
    later run drops what this one could not)."""
    report = RetentionReport(cutoff(retention_days, now))
    if report.cutoff is None:
        return report
    for table in RAW_PARTITIONS:
        for where, expired in shards.drop_partitions(
                client, table, shape, lambda p, table=table: partition_end(table, p) <= report.cutoff):
            report.dropped[table] = sorted({*report.dropped.get(table, ()), *expired})
            log.info("retention: dropped %d partition(s) of %s%s older than %s (%s .. %s)", len(expired),
                     shapes.stored_table(table, shape), where, f"{report.cutoff:%Y-%m-%d %H:%M} UTC", expired[0],
                     expired[-1])
    return report
