"""The loader: the job's committed Kafka output upserted into ClickHouse, effectively once.

It reads (read_committed) what the Flink job's transactional sinks committed: validated events
for `events_raw` and post-minute rollups for `post_minute`, where it builds each minute's HLL
sketch from the distinct viewer ids with `pipelines.sketches`. Offsets are committed only after
ClickHouse accepted the rows, so a crash repeats a batch and never loses one; a repeated batch
changes nothing because both tables are ReplacingMergeTree keyed by the row's identity (the
rollup's version is its Kafka offset, so a re-emitted window replaces the older row).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from pipelines import sketches
from pipelines.clickhouse import (
    DEAD_LETTERS, EVENTS_RAW, POST_MINUTE, POST_SURFACE_MINUTE, POSTS, SPACE_PRESENCE, insert_rows,
)
from pipelines.config import Settings

log = logging.getLogger("viewcount.loader")

EVENTS_RAW_COLUMNS = (
    "event_type", "event_id", "event_time", "event_time_ms", "post_id", "author_id",
    "viewer_id", "surface", "client", "action",
)
DEAD_LETTER_COLUMNS = (
    "source_topic", "source_partition", "source_offset", "reason", "payload", "loaded_at",
)
POST_SURFACE_COLUMNS = ("post_id", "window_start", "surface", "action", "views", "impressions", "version")
PRESENCE_COLUMNS = ("space_id", "listener_id", "event_time", "event_time_ms", "action", "event_id")
POSTS_COLUMNS = ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags", "version")
POST_MINUTE_COLUMNS = (
    "post_id", "window_start", "views", "impressions", "unique_viewers_sketch",
    "unique_viewers", "version",
)


@dataclass
class LoaderStats:
    events: int = 0
    rollups: int = 0
    posts: int = 0
    dead_letters: int = 0
    duplicate_deliveries: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def event_row(record: dict) -> tuple:
    ms = record["event_time_ms"]
    return (
        record["event_type"], record["event_id"], datetime.fromtimestamp(ms // 1000, UTC), ms,
        record["post_id"], record["author_id"], record["viewer_id"], record["surface"],
        record["client"], record.get("action") or "",
    )


def presence_row(record: dict) -> tuple:
    ms = record["event_time_ms"]
    return (record["space_id"], record["listener_id"], datetime.fromtimestamp(ms // 1000, UTC), ms,
            record["action"], record["event_id"])


def post_row(record: dict, version: int) -> tuple:
    return (
        record["post_id"], record["author_id"], datetime.fromtimestamp(record["created_ms"] // 1000, UTC),
        record.get("reply_to") or 0, record.get("quote_of") or 0,
        orjson.loads(record["links"]) if record.get("links") else [],
        orjson.loads(record["tags"]) if record.get("tags") else [],
        version,
    )


def _window_start(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def surface_row(record: dict, version: int) -> tuple:
    return (record["post_id"], _window_start(record["window_start"]), record["surface"], record["action"] or "",
            record["views"], record["impressions"], version)


def rollup_row(record: dict, version: int) -> tuple:
    viewer_ids = record.get("viewer_ids") or ()
    sketch = sketches.sketch_of(viewer_ids)
    window_start = _window_start(record["window_start"])
    return (
        record["post_id"], window_start, record["views"], record["impressions"],
        sketches.to_bytes(sketch), sketch.get_estimate(), version,
    )


class Loader:
    def __init__(self, settings: Settings, client, group_id: str | None = None):
        from confluent_kafka import Consumer

        self.settings = settings
        self.client = client
        self.stats = LoaderStats()
        topics = settings.topics
        self.topics = [topics.events_valid, topics.post_minute, topics.post_surface_minute, topics.posts_valid,
                       topics.presence_valid, topics.dead_letter]
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id or f"{topics.prefix}.loader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 64 * 1024 * 1024,
        })
        self.consumer.subscribe(self.topics)

    def close(self) -> None:
        self.consumer.close()

    def load_batch(self, max_records: int = 100_000, max_wait_s: float = 1.0) -> int:
        """Consume up to max_records (or max_wait_s), write them, then commit. Returns records read."""
        topics = self.settings.topics
        events, rollups, surfaces, posts, presence, dead_letters = [], [], [], [], [], []
        now = datetime.now(UTC).replace(microsecond=0)
        read = 0
        deadline = time.monotonic() + max_wait_s
        last = None
        while read < max_records:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages = self.consumer.consume(num_messages=min(10_000, max_records - read), timeout=min(remaining, 0.5))
            if not messages:
                break
            for message in messages:
                if message.error():
                    log.warning("kafka: %s", message.error())
                    continue
                read += 1
                last = message
                record = orjson.loads(message.value())
                topic = message.topic()
                if topic == topics.events_valid:
                    events.append(event_row(record))
                elif topic == topics.post_minute:
                    rollups.append(rollup_row(record, message.offset()))
                    self.stats.duplicate_deliveries += record["deliveries"] - record["views"] - record["impressions"]
                elif topic == topics.post_surface_minute:
                    surfaces.append(surface_row(record, message.offset()))
                elif topic == topics.posts_valid:
                    posts.append(post_row(record, message.offset()))
                elif topic == topics.presence_valid:
                    presence.append(presence_row(record))
                else:
                    dead_letters.append((record["topic"], record["partition"], record["offset"],
                                         record["reason"], record["payload"] or "", now))
                    self.stats.reasons[record["reason"]] = self.stats.reasons.get(record["reason"], 0) + 1
        if events:
            insert_rows(self.client, EVENTS_RAW, EVENTS_RAW_COLUMNS, events)
        if rollups:
            insert_rows(self.client, POST_MINUTE, POST_MINUTE_COLUMNS, rollups)
        if surfaces:
            insert_rows(self.client, POST_SURFACE_MINUTE, POST_SURFACE_COLUMNS, surfaces)
        if posts:
            insert_rows(self.client, POSTS, POSTS_COLUMNS, posts)
        if presence:
            insert_rows(self.client, SPACE_PRESENCE, PRESENCE_COLUMNS, presence)
        if dead_letters:
            insert_rows(self.client, DEAD_LETTERS, DEAD_LETTER_COLUMNS, dead_letters)
        if last is not None:
            # Only now is the batch safe in ClickHouse: commit what was read, synchronously.
            self.consumer.commit(asynchronous=False)
            self.stats.events += len(events)
            self.stats.rollups += len(rollups)
            self.stats.posts += len(posts)
            self.stats.dead_letters += len(dead_letters)
            self.stats.batches += 1
        return read

    def caught_up(self) -> bool:
        """True when every assigned partition has been read to its end (call after an empty batch).

        A transactional producer writes a commit marker after its records; a consumer may stop
        just before that last marker, so one offset short of the end counts as the end. A
        partition this consumer has not read a record from has no position yet: where the group
        committed (a previous run, e.g. before a crash) is then how far it has been read.
        """
        from confluent_kafka import TopicPartition

        assignment = self.consumer.assignment()
        if not assignment:
            return False
        positions = self.consumer.position(assignment)
        unread = [TopicPartition(p.topic, p.partition) for p in positions if p.offset < 0]
        committed = {(c.topic, c.partition): c.offset
                     for c in (self.consumer.committed(unread, timeout=10) if unread else [])}
        for position in positions:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(position.topic, position.partition), timeout=5, cached=False
            )
            current = position.offset
            if current < 0:
                current = committed.get((position.topic, position.partition), -1)
            if max(current, low) < high - 1:
                return False
        return True

    def run(self, should_stop: Callable[[], bool], on_batch: Callable[[LoaderStats], None] | None = None) -> LoaderStats:
        while not should_stop():
            if self.load_batch() and on_batch:
                on_batch(self.stats)
        return self.stats
