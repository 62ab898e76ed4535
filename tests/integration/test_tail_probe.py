"""Whether a topic's last offset still holds a record (at-least-once outputs) or is only a
transaction's marker, against the real Kafka broker (pipelines.stream.kafka.holds_a_record)."""

from __future__ import annotations

import uuid

import pytest

from pipelines.stream.kafka import holds_a_record

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(stack_settings):
    """A topic of this test's own (two partitions), removed at the end."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"tail-probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack_settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)]).values():
        future.result()
    yield name
    for future in admin.delete_topics([name], operation_timeout=30).values():
        future.result()


def test_a_last_offset_that_is_a_marker_holds_no_record_and_a_plain_one_does(stack_settings, topic):
    from confluent_kafka import Producer

    bootstrap = stack_settings.kafka_bootstrap
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}.marker"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"{}", partition=0)
    producer.commit_transaction(30)  # offset 0: the record; offset 1: the commit marker
    assert holds_a_record(bootstrap, topic, 0, 0)
    assert not holds_a_record(bootstrap, topic, 0, 1)

    plain = Producer({"bootstrap.servers": bootstrap})
    plain.produce(topic, b"{}", partition=1)  # at least once: no marker after it
    assert plain.flush(30) == 0
    assert holds_a_record(bootstrap, topic, 1, 0)
