"""Loading the job's output into ClickHouse, against the real Kafka broker and ClickHouse server:
the Python loader (posts, presence, dead letters) and ClickHouse's own Kafka consumers (every
valid event and rollup row, pipelines.stream.streams)."""

from __future__ import annotations

import orjson
import pytest

from tests.support import poll

pytestmark = pytest.mark.integration


def _post(n: int) -> bytes:
    """A validated post creation, as the job writes it."""
    return orjson.dumps({"post_id": 10_000 + n, "author_id": 7, "created_ms": 1723506420000 + n,
                         "reply_to": 1 if n % 2 else None, "quote_of": None, "links": None, "tags": '["x"]'})


def _valid_event(n: int) -> bytes:
    """An archive record as the job writes it (EVENTS_VALID.wire: RowBinary)."""
    from pipelines.store import row_binary
    from pipelines.store.tables import EVENTS_VALID

    return row_binary.encode(EVENTS_VALID.fields, {
        "event_type": "view", "event_id": f"loader-{n}", "event_time_ms": 1723506420000 + n, "post_id": 1 + n % 7,
        "author_id": 7, "viewer_id": n, "surface": "home", "client": "ios", "action": "", "late": 0})


def _produce(settings, topic: str, records: list[bytes], keys=None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i, record in enumerate(records):
        producer.produce(topic, record, (keys or (lambda i: str(i).encode()))(i))
    assert producer.flush(30) == 0


def _load_until_caught_up(*loaders, deadline_s: float = 60) -> list[int]:
    loaded = [0] * len(loaders)

    def caught_up() -> bool:
        reads = [loader.load_batch(max_wait_s=0.5) for loader in loaders]
        loaded[:] = [a + b for a, b in zip(loaded, reads, strict=True)]
        return not any(reads) and all(loader.caught_up() for loader in loaders)

    poll(caught_up, deadline_s, "the loaders caught up", interval_s=0)
    return loaded


def test_a_restarted_loader_with_nothing_new_to_read_is_caught_up(own_stack):
    """A partition a restarted loader reads nothing from has no consumer position: how far the
    group committed before the restart must count (a bounded run after a crash hung on this)."""
    from pipelines.store.clickhouse import connect
    from pipelines.stream.loader import Loader

    settings, topics = own_stack, own_stack.topics
    clickhouse = connect(settings)
    _produce(settings, topics.posts_valid, [_post(n) for n in range(3)], keys=lambda _: b"1")  # one partition

    first = Loader(settings, clickhouse, group_id=f"{topics.prefix}.loader-restart")
    assert _load_until_caught_up(first) == [3]
    first.close()

    restarted = Loader(settings, clickhouse, group_id=f"{topics.prefix}.loader-restart")
    try:
        assert _load_until_caught_up(restarted) == [0]
    finally:
        restarted.close()
    (count,), = clickhouse.execute("SELECT count() FROM posts FINAL")
    assert count == 3


def test_two_loaders_in_one_group_split_the_partitions_and_lose_or_double_nothing(own_stack):
    from pipelines.store.clickhouse import connect
    from pipelines.stream.loader import Loader

    settings, topics = own_stack, own_stack.topics
    clickhouse = connect(settings)
    _produce(settings, topics.posts_valid, [_post(n) for n in range(1_000)])
    group = f"{topics.prefix}.loader-pair"
    first, second = Loader(settings, clickhouse, group_id=group), Loader(settings, connect(settings), group_id=group)
    try:
        loaded = _load_until_caught_up(first, second)
        assignments = [{(p.topic, p.partition) for p in loader.consumer.assignment()} for loader in (first, second)]
    finally:
        first.close()
        second.close()
    assert sum(loaded) == 1_000
    assert assignments[0] and assignments[1] and not assignments[0] & assignments[1]
    (rows, posts), = clickhouse.execute("SELECT count(), uniqExact(post_id) FROM posts")
    assert (rows, posts) == (1_000, 1_000)


def test_clickhouse_loads_valid_events_itself_and_a_replay_changes_nothing(own_stack):
    """ClickHouse's Kafka consumer writes every valid event into the archive; the same records
    delivered again (a crash between its write and its offset commit) leave the counts as they are."""
    from pipelines.store.clickhouse import connect
    from pipelines.stream import streams

    settings, topics = own_stack, own_stack.topics
    clickhouse = connect(settings)
    records = [_valid_event(n) for n in range(5_000)]
    _produce(settings, topics.events_valid, records)
    _produce(settings, topics.events_valid, records[:1_000])  # the replay
    assert streams.ensure(clickhouse, settings) == [streams.queue_table(o) for o in streams.LOADED_BY_CLICKHOUSE]
    assert streams.ensure(clickhouse, settings) == []  # idempotent
    poll(lambda: clickhouse.execute("SELECT count() FROM events_raw")[0][0] >= 6_000, 120,
         "ClickHouse loading 6,000 records")
    (rows,), = clickhouse.execute("SELECT count() FROM events_raw")
    progress = streams.Progress(settings)
    try:
        assert progress.remaining() == 0
    finally:
        progress.close()
    (events, distinct), = clickhouse.execute("SELECT count(), uniqExact(event_id) FROM events_raw FINAL")
    assert rows == 6_000
    assert events == distinct == 5_000
    (minute_views,), = clickhouse.execute(
        "SELECT count() FROM events_raw FINAL WHERE event_time = toDateTime('2024-08-12 23:47:00', 'UTC') + 3")
    assert minute_views == 1_000  # event_time is whole UTC seconds of event_time_ms

