"""Where a restarted job's watermark starts, against the real Kafka broker: the closed minutes the
job's checkpoints committed, and nothing of a transaction a crash left open; and when a topic's
last offset still holds a record (at-least-once outputs) or is only a transaction's marker."""

from __future__ import annotations

import uuid
from dataclasses import replace

import orjson
import pytest

from pipelines.config import Topics
from pipelines.stream.kafka import holds_a_record
from pipelines.stream.restore_points import watermark_floor_ms

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
FIRST = 1723506420000  # 2024-08-12 23:47:00 UTC


@pytest.fixture
def floor_settings(stack_settings):
    """Settings whose closed-minutes topic is this test's own (two partitions), removed at the end."""
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = replace(stack_settings, topics=Topics(prefix=f"floor{uuid.uuid4().hex[:8]}"))
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.topics.closed_minutes
    for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
        future.result()
    yield settings
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result()


def _transactional(settings, name: str):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": name})
    producer.init_transactions(30)
    return producer


def _minutes(producer, topic: str, starts: list[int]) -> None:
    for i, start in enumerate(starts):
        producer.produce(topic, orjson.dumps({"window_start_ms": start}), partition=i % 2)


def test_a_topic_without_closed_minutes_gives_no_floor(floor_settings):
    assert watermark_floor_ms(floor_settings, timeout_s=30) is None


def test_the_floor_is_the_newest_committed_minute_and_an_open_transaction_is_not_read(floor_settings):
    topic = floor_settings.topics.closed_minutes
    producer = _transactional(floor_settings, f"{topic}.committed")
    producer.begin_transaction()
    _minutes(producer, topic, [FIRST, FIRST + 2 * MINUTE_MS, FIRST + MINUTE_MS])
    producer.commit_transaction(30)
    # A crash left the next checkpoint's minutes open: they must not count.
    crashed = _transactional(floor_settings, f"{topic}.crashed")
    crashed.begin_transaction()
    _minutes(crashed, topic, [FIRST + 5 * MINUTE_MS, FIRST + 6 * MINUTE_MS])
    assert crashed.flush(30) == 0

    assert watermark_floor_ms(floor_settings, timeout_s=30) == FIRST + 3 * MINUTE_MS - 1
    crashed.abort_transaction(30)
    assert watermark_floor_ms(floor_settings, timeout_s=30) == FIRST + 3 * MINUTE_MS - 1


def test_a_last_offset_that_is_a_marker_holds_no_record_and_a_plain_one_does(floor_settings):
    from confluent_kafka import Producer

    topic = floor_settings.topics.closed_minutes
    producer = _transactional(floor_settings, f"{topic}.marker")
    producer.begin_transaction()
    producer.produce(topic, b'{"window_start_ms": 0}', partition=0)
    producer.commit_transaction(30)  # offset 0: the record; offset 1: the commit marker
    assert holds_a_record(floor_settings.kafka_bootstrap, topic, 0, 0)
    assert not holds_a_record(floor_settings.kafka_bootstrap, topic, 0, 1)

    plain = Producer({"bootstrap.servers": floor_settings.kafka_bootstrap})
    plain.produce(topic, b'{"window_start_ms": 0}', partition=1)  # at least once: no marker after it
    assert plain.flush(30) == 0
    assert holds_a_record(floor_settings.kafka_bootstrap, topic, 1, 0)
