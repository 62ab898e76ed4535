"""The change feed: which post-minutes and Space minutes ClickHouse's Kafka consumers have loaded.

The subject rollups (pipelines.rollups.subject_rollups) refresh what `rollup_changes` says changed. Rows
inserted directly into post_minute or space_presence reach it through materialized views, but
ClickHouse 18.16 does not run a table's views for rows another view writes into it, and that is
how its Kafka consumers load those tables (pipelines.stream.streams). A second view on a Kafka table would
see the rows, but made 18.16 abort on dropping such a table (docs/design.md).

So this feed reads the same topics in a consumer group of its own, keeps only the keys (post and
minute; Space and minute), and writes them to `rollup_changes` once ClickHouse's own consumer has
committed past them and the rows are readable. The commit alone is not enough on 18.16: its Kafka
engine commits when it has read a batch (the read stream's suffix) and only then flushes the batch,
squashed into one block, into the tables (the write stream's suffix), so for a moment the offsets
are past rows nobody can read yet (seen in CI: the feed announced a minute whose row was not there).
So the feed also finds the last record it read of each partition in its table (`_readable`): a
consumer loads a partition in offset order, one batch after the other, so when that row is there,
every row before it is. A row replaced or deleted meanwhile (a rebuilt hour, an erasure) is never
found: after READABLE_WAIT_S the changes are written anyway, with a warning. Offsets are committed
after the insert: a crash repeats a batch of keys, which the refresh reads as one (it takes
distinct minutes).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import repeat

import orjson
from confluent_kafka import Message

from pipelines.config import Settings
from pipelines.rollups.subject_rollups import server_now
from pipelines.rollups.subject_rows import EPOCH
from pipelines.store.clickhouse import insert_rows
from pipelines.store.tables import POST_MINUTE_ROWS, PRESENCE_VALID, ROLLUP_CHANGES, TABLE_COLUMNS, Output
from pipelines.stream import kafka, streams

log = logging.getLogger("viewcount.change_feed")


@functools.lru_cache(maxsize=4096)
def _minute(token: str | bytes) -> int:
    """The minute (seconds since the epoch, UTC, as ClickHouse's DateTime holds it) a key's token
    names: a minute's start in ms (a presence key), or a window start as the job writes it
    ('2024-08-13 01:02:00.000'). Many keys share a minute: each token is read once."""
    if isinstance(token, bytes):
        token = token.decode()
    if token.isdigit():
        return int(token) // 60_000 * 60
    return (datetime.fromisoformat(token[:19]) - EPOCH) // timedelta(seconds=1)


# The change a record of each followed output makes: (source, key, minute). `source` is the
# table's name, as the materialized views on direct inserts write it (migration 0010).
# Read from the record's Kafka key (job_sql.CHANGE_KEYS), without decoding the record; from the
# record itself only when it has no such key (written by another producer, or before the job keyed them).
KEY_OF: dict[str, Callable[[dict], tuple[str, int, int]]] = {
    POST_MINUTE_ROWS.name: lambda r: (POST_MINUTE_ROWS.table, r["post_id"], _minute(r["window_start"][:19])),
    PRESENCE_VALID.name: lambda r: (PRESENCE_VALID.table, r["space_id"], r["event_time_ms"] // 60_000 * 60),
}
FOLLOWED: tuple[Output, ...] = tuple(o for o in streams.LOADED_BY_CLICKHOUSE if o.name in KEY_OF)


def key_change(output: Output, key: bytes | None) -> tuple[str, int, int] | None:
    """The change a record's Kafka key names (job_sql.CHANGE_KEYS), or None if it names none."""
    try:
        ident, token = key.split(b" ", 1)
        return output.table, int(ident), _minute(token)
    except (AttributeError, UnicodeDecodeError, ValueError):
        return None


# The row each followed output's record becomes: (table's identity columns, the record's values of them).
ROW_OF: dict[str, tuple[tuple[str, ...], Callable[[dict], tuple]]] = {
    POST_MINUTE_ROWS.name: (("post_id", "window_start", "version"),
                            lambda r: (r["post_id"], datetime.fromisoformat(r["window_start"][:19]), r["version"])),
    PRESENCE_VALID.name: (("event_id",), lambda r: (r["event_id"],)),
}
# Say so in the log when ClickHouse's consumers hold a batch back for this long.
HELD_WARNING_S = 60.0
# How long a batch whose offsets ClickHouse committed may wait for its last rows to be readable.
READABLE_WAIT_S = 30.0


class ChangeFeed:
    """Call `step()` often (the runner does, between the loader's batches); it never blocks long."""

    def __init__(self, settings: Settings, client, group_id: str | None = None, max_records: int = 50_000):
        from confluent_kafka import Consumer

        self.client = client
        self.max_records = max_records
        self.bootstrap = settings.kafka_bootstrap
        self.outputs = {getattr(settings.topics, o.topic): o for o in FOLLOWED}
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id or f"{settings.topics.prefix}.changes",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **kafka.GROUP_MEMBER,
        })
        self.consumer.subscribe(list(self.outputs))
        # How far ClickHouse's consumer of each topic has committed (one group per output).
        self.loaded_by = {topic: kafka.CommittedOffsets(settings, streams.group_id(settings, output))
                          for topic, output in self.outputs.items()}
        self.changes_written = 0
        self._held: tuple[set[tuple[str, int, int]], dict[tuple[str, int], int]] | None = None
        self._held_since = 0.0
        # The last record read of each partition, as (output, row identity): `_readable`.
        self._last_rows: dict[tuple[str, int], tuple[Output, tuple]] = {}
        self._committed_since: float | None = None

    def step(self, wait_s: float = 0.2) -> int:
        """Read a batch of keys, or write the held one once ClickHouse has loaded its rows.
        Returns the changes written."""
        if self._held is None:
            self._held = self._read(wait_s)
            self._held_since = time.monotonic()
            if self._held is None:
                return 0
        keys, last_offsets = self._held
        if not self._loaded(last_offsets):
            if time.monotonic() - self._held_since > HELD_WARNING_S:
                log.warning("ClickHouse's Kafka consumers have not loaded the rows of %d changed minutes for "
                            "%.0f s; the subject rollups wait for them", len(keys), time.monotonic() - self._held_since)
                self._held_since = time.monotonic()
            return 0
        if self._committed_since is None:
            self._committed_since = time.monotonic()
        if not self._readable():
            waited = time.monotonic() - self._committed_since
            if waited < READABLE_WAIT_S:
                return 0
            log.warning("the last rows of %d changed minutes are still not readable %.0f s after ClickHouse "
                        "committed past them (replaced or deleted meanwhile?); writing the changes", len(keys), waited)
        # The clock the views on direct inserts stamp changes with; times go to the driver as
        # seconds since the epoch (it converts a datetime in Python, one by one).
        now = (server_now(self.client) - EPOCH) // timedelta(seconds=1)
        insert_rows(self.client, ROLLUP_CHANGES, TABLE_COLUMNS[ROLLUP_CHANGES],
                    list(map(tuple.__add__, keys, repeat((now,)))))  # (source, key, minute, now), in C
        self.consumer.commit(asynchronous=False)
        self._held = None
        self._last_rows = {}
        self._committed_since = None
        self.changes_written += len(keys)
        return len(keys)

    def _read(self, wait_s: float):
        """A batch of changes, and the last offset read of each partition. Per record this touches
        only the Kafka key, through C-level maps: the records are decoded only per partition's
        last one (for `_readable`) and for records without a change key."""
        messages = self.consumer.consume(num_messages=self.max_records, timeout=wait_s)
        if any(map(Message.error, messages)):
            for message in messages:
                if message.error():
                    log.warning("kafka: %s", message.error())
            messages = [m for m in messages if not m.error()]
        if not messages:
            return None
        topics = list(map(Message.topic, messages))
        keys: set[tuple[str, int, int]] = set()
        unkeyed = set()
        for topic, key in set(zip(topics, map(Message.key, messages), strict=True)):
            change = key_change(self.outputs[topic], key)
            if change is None:
                unkeyed.add((topic, key))
            else:
                keys.add(change)
        for message in messages if unkeyed else ():
            if (message.topic(), message.key()) in unkeyed:
                output = self.outputs[message.topic()]
                keys.add(KEY_OF[output.name](orjson.loads(message.value())))
        last_offsets: dict[tuple[str, int], int] = {}
        partitions = zip(topics, map(Message.partition, messages), strict=True)
        for (topic, partition), message in dict(zip(partitions, messages, strict=True)).items():
            last_offsets[(topic, partition)] = message.offset()
            output = self.outputs[topic]
            self._last_rows[(topic, partition)] = (output, orjson.loads(message.value()))
        return keys, last_offsets

    def _loaded(self, last_offsets: dict[tuple[str, int], int]) -> bool:
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in last_offsets.items():
            by_topic.setdefault(topic, {})[partition] = offset
        for topic, partitions in by_topic.items():
            committed = self.loaded_by[topic].committed(topic, list(partitions))
            if any(committed.get(p, -1) <= offset for p, offset in partitions.items()):
                return False
        return True

    def _readable(self) -> bool:
        """Whether the last record read of each partition is a row of its table now."""
        wanted: dict[Output, set[tuple]] = {}
        for output, record in self._last_rows.values():
            wanted.setdefault(output, set()).add(ROW_OF[output.name][1](record))
        for output, rows in wanted.items():
            names = ROW_OF[output.name][0]
            columns = ", ".join(names)
            values = tuple(sorted(rows)) if len(names) > 1 else tuple(sorted(row for (row,) in rows))
            found = self.client.execute(f"SELECT DISTINCT {columns} FROM {output.table} WHERE ({columns}) IN %(rows)s",
                                        {"rows": values})
            if len(found) < len(rows):
                return False
        return True

    def caught_up(self) -> bool:
        """Nothing held and every assigned partition read to its end."""
        return self._held is None and kafka.caught_up(self.consumer, self.bootstrap)

    def close(self) -> None:
        self.consumer.close()
        for offsets in self.loaded_by.values():
            offsets.close()
