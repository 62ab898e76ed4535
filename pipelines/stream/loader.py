"""The loader: the job's low-volume outputs upserted into ClickHouse, effectively once.

It reads what the Flink job's sinks wrote (at least once) for the outputs
ClickHouse does not load itself (pipelines.store.tables: posts and dead letters) and
writes them with clickhouse-driver. Offsets are committed only after ClickHouse accepted the rows,
so a crash repeats a batch and never loses one; a repeated batch changes nothing because the
tables are ReplacingMergeTree keyed by the row's identity.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from pipelines.config import Settings
from pipelines.store.clickhouse import insert_rows, is_transient
from pipelines.store.tables import DEAD_LETTER, OUTPUTS, POSTS_VALID, TABLE_COLUMNS, Output
from pipelines.stream import kafka

log = logging.getLogger("viewcount.loader")
LOADED_BY_PYTHON = tuple(o for o in OUTPUTS if not o.clickhouse_loads)
# Backoff while ClickHouse is unreachable: first wait, doubled up to the longest.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


@dataclass
class LoaderStats:
    """Rows written per output (`rows["posts_valid"]`, ...), batches, and dead letters by reason."""

    rows: Counter = field(default_factory=Counter)
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def dead_letters(self) -> int:
        return self.rows[DEAD_LETTER.name]

    @property
    def posts(self) -> int:
        return self.rows[POSTS_VALID.name]


def _second(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC)


def post_row(record: dict, offset: int, _now: datetime) -> tuple:
    return (
        record["post_id"], record["author_id"], _second(record["created_ms"]),
        record.get("reply_to") or 0, record.get("quote_of") or 0,
        orjson.loads(record["links"]) if record.get("links") else [],
        orjson.loads(record["tags"]) if record.get("tags") else [],
        offset,
    )


def dead_letter_row(record: dict, _offset: int, now: datetime) -> tuple:
    return (record["topic"], record["partition"], record["offset"], record["reason"], record["payload"] or "", now)


# Output -> how one of its records becomes a row of its table (columns: pipelines.store.tables).
ROW_BUILDERS: dict[str, Callable[[dict, int, datetime], tuple]] = {
    POSTS_VALID.name: post_row, DEAD_LETTER.name: dead_letter_row,
}


class Loader:
    def __init__(self, settings: Settings, client, group_id: str | None = None):
        from confluent_kafka import Consumer

        self.settings = settings
        self.client = client
        self.stats = LoaderStats()
        self.outputs: dict[str, Output] = {getattr(settings.topics, o.topic): o for o in LOADED_BY_PYTHON}
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id or f"{settings.topics.prefix}.loader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 64 * 1024 * 1024,
            **kafka.GROUP_MEMBER,
        })
        self.consumer.subscribe(list(self.outputs))

    def close(self) -> None:
        self.consumer.close()

    def load_batch(self, max_records: int = 100_000, max_wait_s: float = 1.0) -> int:
        """Consume up to max_records (or max_wait_s), write them, then commit. Returns records read."""
        rows: dict[str, list[tuple]] = {o.name: [] for o in self.outputs.values()}
        now = datetime.now(UTC).replace(microsecond=0)
        read = 0
        deadline = time.monotonic() + max_wait_s
        while read < max_records and (remaining := deadline - time.monotonic()) > 0:
            messages = self.consumer.consume(num_messages=min(10_000, max_records - read), timeout=min(remaining, 0.5))
            if not messages:
                break
            for message in messages:
                if message.error():
                    log.warning("kafka: %s", message.error())
                    continue
                read += 1
                output = self.outputs[message.topic()]
                record = orjson.loads(message.value())
                rows[output.name].append(ROW_BUILDERS[output.name](record, message.offset(), now))
                if output is DEAD_LETTER:
                    self.stats.reasons[record["reason"]] += 1
        if read == 0:
            return 0
        self._write(rows)
        self.stats.rows.update({name: len(batch) for name, batch in rows.items()})
        self.stats.batches += 1
        return read

    def _write(self, rows: dict[str, list[tuple]]) -> None:
        """Write the batch, then commit its offsets; while ClickHouse is unreachable, wait and try
        again with backoff (never skip the batch: its offsets are only committed once it is in)."""
        delay, attempt = RETRY_FIRST_S, 0
        while True:
            try:
                for output in self.outputs.values():
                    if rows[output.name]:
                        insert_rows(self.client, output.table, TABLE_COLUMNS[output.table], rows[output.name])
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # A table written before the failure is written again: ReplacingMergeTree keeps one row.
                attempt += 1
                log.warning("ClickHouse did not take the loader's batch (%s: %s); attempt %d, trying again in "
                            "%.1f s", type(exc).__name__, exc, attempt, delay)
                self.client.disconnect()
                time.sleep(delay)  # backoff while the server is away, not synchronisation
                delay = min(delay * 2, RETRY_MAX_S)
        if attempt:
            log.info("ClickHouse took the loader's batch after %d retries", attempt)
        # Only now is the batch safe in ClickHouse: commit what was read, synchronously.
        self.consumer.commit(asynchronous=False)

    def caught_up(self) -> bool:
        """True when every assigned partition has been read to its end (call after an empty batch)."""
        return kafka.caught_up(self.consumer, self.settings.kafka_bootstrap)
