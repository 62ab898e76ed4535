"""The change feed: which post-minutes and Space minutes ClickHouse's Kafka consumers have loaded.

The subject rollups (pipelines.rollups.subject_rollups) refresh what `rollup_changes` says changed. Rows
inserted directly into post_minute or space_presence reach it through materialized views, but
ClickHouse 18.16 does not run a table's views for rows another view writes into it, and that is
how its Kafka consumers load those tables (pipelines.stream.streams). A second view on a Kafka table would
see the rows, but made 18.16 abort on dropping such a table (docs/design.md).

So this feed reads the same topics in a consumer group of its own, keeps only the keys (post and
minute; Space and minute), and writes them to `rollup_changes` once ClickHouse's own consumer has
committed past them: its Kafka engine commits after the block is in the table, so a change is
never recorded before the rows it announces can be read. Offsets are committed after the insert:
a crash repeats a batch of keys, which the refresh reads as one (it takes distinct minutes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from pipelines.config import Settings
from pipelines.rollups.subject_rollups import server_now
from pipelines.store.clickhouse import insert_rows
from pipelines.store.tables import POST_MINUTE_ROWS, PRESENCE_VALID, ROLLUP_CHANGES, TABLE_COLUMNS, Output
from pipelines.stream import kafka, streams

log = logging.getLogger("viewcount.change_feed")


def _minute(token: int | str) -> datetime:
    """The minute (naive UTC, as ClickHouse's DateTime) a key's token names: minutes since the
    epoch, or a window start as the job writes it ('2024-08-13 01:02:00.000')."""
    if isinstance(token, int):
        return datetime.fromtimestamp(token * 60, UTC).replace(tzinfo=None)
    return datetime.fromisoformat(token[:19])


# The key a record of each followed output changes: (source, key, minute token). `source` is the
# table's name, as the materialized views on direct inserts write it (migration 0010). Tokens are
# turned into minutes once per distinct key (a Space's presence events share a few minutes).
KEY_OF: dict[str, Callable[[dict], tuple[str, int, int | str]]] = {
    POST_MINUTE_ROWS.name: lambda r: (POST_MINUTE_ROWS.table, r["post_id"], r["window_start"][:19]),
    PRESENCE_VALID.name: lambda r: (PRESENCE_VALID.table, r["space_id"], r["event_time_ms"] // 60_000),
}
FOLLOWED: tuple[Output, ...] = tuple(o for o in streams.LOADED_BY_CLICKHOUSE if o.name in KEY_OF)
# Say so in the log when ClickHouse's consumers hold a batch back for this long.
HELD_WARNING_S = 60.0


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
        })
        self.consumer.subscribe(list(self.outputs))
        # How far ClickHouse's consumer of each topic has committed (one group per output).
        self.loaded_by = {topic: kafka.CommittedOffsets(settings, streams.group_id(settings, output))
                          for topic, output in self.outputs.items()}
        self.changes_written = 0
        self._held: tuple[set[tuple[str, int, int | str]], dict[tuple[str, int], int]] | None = None
        self._held_since = 0.0

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
        now = server_now(self.client)  # the clock the views on direct inserts stamp changes with
        changes = sorted({(source, key, _minute(token)) for source, key, token in keys})
        insert_rows(self.client, ROLLUP_CHANGES, TABLE_COLUMNS[ROLLUP_CHANGES],
                    [(source, key, minute, now) for source, key, minute in changes])
        self.consumer.commit(asynchronous=False)
        self._held = None
        self.changes_written += len(keys)
        return len(keys)

    def _read(self, wait_s: float):
        keys: set[tuple[str, int, int | str]] = set()
        last_offsets: dict[tuple[str, int], int] = {}
        for message in self.consumer.consume(num_messages=self.max_records, timeout=wait_s):
            if message.error():
                log.warning("kafka: %s", message.error())
                continue
            output = self.outputs[message.topic()]
            keys.add(KEY_OF[output.name](orjson.loads(message.value())))
            last_offsets[(message.topic(), message.partition())] = message.offset()
        return (keys, last_offsets) if last_offsets else None

    def _loaded(self, last_offsets: dict[tuple[str, int], int]) -> bool:
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in last_offsets.items():
            by_topic.setdefault(topic, {})[partition] = offset
        for topic, partitions in by_topic.items():
            committed = self.loaded_by[topic].committed(topic, list(partitions))
            if any(committed.get(p, -1) <= offset for p, offset in partitions.items()):
                return False
        return True

    def caught_up(self) -> bool:
        """Nothing held and every assigned partition read to its end."""
        return self._held is None and kafka.caught_up(self.consumer, self.bootstrap)

    def close(self) -> None:
        self.consumer.close()
        for offsets in self.loaded_by.values():
            offsets.close()
