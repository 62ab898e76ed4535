"""The loader against the real Kafka broker and ClickHouse server."""

from __future__ import annotations

import time

import orjson
import pytest

pytestmark = pytest.mark.integration


def _valid_event(n: int) -> bytes:
    return orjson.dumps({"event_type": "view", "event_id": f"loader-{n}", "event_time_ms": 1723506420000 + n,
                         "post_id": 1, "author_id": 7, "viewer_id": n, "surface": "home", "client": "ios",
                         "action": ""})


def _load_until_caught_up(loader, deadline_s: float = 60) -> int:
    deadline = time.monotonic() + deadline_s
    loaded = 0
    while True:
        read = loader.load_batch(max_wait_s=0.5)
        loaded += read
        if read == 0 and loader.caught_up():
            return loaded
        assert time.monotonic() < deadline, "the loader never reported being caught up"


def test_a_restarted_loader_with_nothing_new_to_read_is_caught_up(own_stack):
    """A partition a restarted loader reads nothing from has no consumer position: how far the
    group committed before the restart must count (a bounded run after a crash hung on this)."""
    from confluent_kafka import Producer

    from pipelines.clickhouse import connect
    from pipelines.loader import Loader

    settings, topics = own_stack, own_stack.topics
    clickhouse = connect(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for n in range(3):  # one key, so one partition holds all three: its end is 3
        producer.produce(topics.events_valid, _valid_event(n), b"1")
    assert producer.flush(30) == 0

    first = Loader(settings, clickhouse, group_id=f"{topics.prefix}.loader-restart")
    assert _load_until_caught_up(first) == 3
    first.close()

    restarted = Loader(settings, clickhouse, group_id=f"{topics.prefix}.loader-restart")
    try:
        assert _load_until_caught_up(restarted) == 0
    finally:
        restarted.close()
    (count,), = clickhouse.execute("SELECT count() FROM events_raw FINAL WHERE event_id LIKE 'loader-%'")
    assert count == 3
