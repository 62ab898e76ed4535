"""The change feed tells the subject rollups what ClickHouse's own Kafka consumers loaded, and
only once they have loaded it (real broker, real ClickHouse server, no Flink: the records are
written as the job writes them)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pipelines.rollups import sketches, subject_rollups
from pipelines.rollups.subjects import load_subjects
from pipelines.serve import figures_from_posts, figures_from_rollups, query
from pipelines.stream import streams
from tests.support import poll

pytestmark = pytest.mark.integration

MINUTE = datetime(2024, 8, 13, 1, 30, tzinfo=UTC)
MINUTE_MS = int(MINUTE.timestamp() * 1000)


def _post_minute(post_id: int, viewers: list[int]) -> bytes:
    """A post-minute row as the job's sink writes it (window start as text, sketch as hex)."""
    sketch = sketches.sketch_of(viewers)
    return orjson.dumps({"post_id": post_id, "window_start": MINUTE.strftime("%Y-%m-%d %H:%M:%S.000"),
                         "views": len(viewers), "impressions": 0, "deliveries": len(viewers),
                         "unique_viewers_sketch": sketches.to_bytes(sketch).hex(),
                         "unique_viewers": sketch.get_estimate(), "version": 1})


def _presence(n: int, space_id: int, action: str) -> bytes:
    return orjson.dumps({"event_id": f"feed-{n}-{action}", "event_time_ms": MINUTE_MS + 1_000 + n,
                         "space_id": space_id, "listener_id": n + 1, "action": action})


def _produce(settings, topic: str, records: list[bytes], keys: list[bytes] | None = None) -> None:
    """Keyed as the job keys them (job_sql.CHANGE_KEYS), or with keys that name no change (as another
    producer's), which the feed reads from the records instead."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i, record in enumerate(records):
        producer.produce(topic, record, keys[i] if keys else str(i).encode())
    assert producer.flush(30) == 0


def _step_until(feed, done, what: str, deadline_s: float = 120) -> None:
    def stepped() -> bool:
        if done():
            return True
        feed.step(wait_s=0.2)
        return False

    poll(stepped, deadline_s, what, interval_s=0)


def test_rows_loaded_by_clickhouse_reach_the_subject_rollups_and_never_before_they_are_readable(own_stack):
    from pipelines.store.clickhouse import connect
    from pipelines.stream.change_feed import ChangeFeed

    settings, topics = own_stack, own_stack.topics
    subject = load_subjects()["space-2024-08-12"]
    client = connect(settings)
    subject_rollups.refresh(client, settings, {subject.id: subject})  # built once, empty
    _produce(settings, topics.post_minute, [_post_minute(subject.root_post_id, [1, 2, 3])],
             [f"{subject.root_post_id} {MINUTE:%Y-%m-%d %H:%M:%S}.000".encode()])
    _produce(settings, topics.presence_valid,
             [_presence(n, subject.space_id, "join") for n in range(4)])

    feed = ChangeFeed(settings, connect(settings), group_id=f"{topics.prefix}.changes-test")
    try:
        # ClickHouse has no consumer for these topics yet: the feed reads the keys and holds them.
        _step_until(feed, lambda: feed._held is not None, "the feed read the keys")
        for _ in range(5):
            assert feed.step(wait_s=0.1) == 0
        assert client.execute("SELECT count() FROM rollup_changes")[0][0] == 0

        streams.ensure(client, settings)
        _step_until(feed, lambda: feed.changes_written > 0, "the feed wrote the changes once ClickHouse loaded")
        # Written only after ClickHouse's consumer committed past them: the rows are readable.
        assert client.execute("SELECT sum(views) FROM post_minute")[0][0] == 3
        assert client.execute("SELECT count() FROM space_presence")[0][0] == 4
        assert sorted(client.execute("SELECT source, key, window_start FROM rollup_changes")) == [
            ("post_minute", subject.root_post_id, MINUTE.replace(tzinfo=None)),
            ("space_presence", subject.space_id, MINUTE.replace(tzinfo=None)),
        ]
        _step_until(feed, feed.caught_up, "the feed caught up")
    finally:
        feed.close()

    subject_rollups.refresh(client, settings, {subject.id: subject})
    rolled = figures_from_rollups.subject_rollup_figures(client, subject, *query.ALL_TIME)
    reference = figures_from_posts.subject_figures(client, subject, *query.ALL_TIME)
    assert rolled.subject_views == reference.subject_views == 3
    assert rolled.combined_views == reference.combined_views
    assert rolled.listeners.peak_listeners == reference.listeners.peak_listeners == 4
