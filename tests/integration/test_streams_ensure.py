"""ClickHouse's Kafka consumers follow the job's outputs: `streams.ensure` keeps them in their own
database (no reader may use it: reading a Kafka table consumes), moves one left where earlier
versions made them, and replaces one whose columns are not the output's any more (a deployment of a
new version), keeping its consumer group either way, and once the topic's records in the old shape
are loaded."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from pipelines.store.clickhouse import connect
from pipelines.store.tables import EVENTS_VALID
from pipelines.stream import streams
from tests.support import poll

pytestmark = pytest.mark.integration


def test_a_consumer_with_old_columns_or_in_the_old_place_is_replaced_and_one_up_to_date_is_left(own_stack):
    client = connect(own_stack)
    database, queues = own_stack.clickhouse.database, own_stack.clickhouse.queues_database
    assert sorted(streams.ensure(client, own_stack)) == sorted(
        streams.queue_table(o) for o in streams.LOADED_BY_CLICKHOUSE)
    assert streams.ensure(client, own_stack) == [], "nothing to do when every consumer is current"
    queue, view, group = streams.queue_table(EVENTS_VALID), streams.loader_view(EVENTS_VALID), \
        streams.group_id(own_stack, EVENTS_VALID)
    params = {"broker": own_stack.kafka_bootstrap, "topic": own_stack.topics.events_valid, "group": group}

    # The archive's consumer as an earlier version created it: without the `late` column.
    earlier = replace(EVENTS_VALID, fields=tuple(f for f in EVENTS_VALID.fields if f.name != "late"))
    client.execute(f"DROP TABLE {queues}.{view}")
    client.execute(f"DROP TABLE {queues}.{queue}")
    client.execute(streams._queue_sql(earlier, queues), params)
    assert streams.ensure(client, own_stack) == [queue]
    assert streams._columns(client, queues, queue) == [(f.name, f.clickhouse) for f in EVENTS_VALID.fields]
    assert f"'{group}'" in streams._create_query(client, queues, queue), "the same consumer group goes on"
    assert streams._create_query(client, queues, view) is not None

    # Where versions before the queues' database made them: in the project's database, which the
    # analyst reads. Moved, with their group.
    client.execute(f"DROP TABLE {queues}.{view}")
    client.execute(f"DROP TABLE {queues}.{queue}")
    client.execute(streams._queue_sql(EVENTS_VALID, database), params)
    client.execute(streams.view_sql(EVENTS_VALID, database, database))
    assert streams.ensure(client, own_stack) == [queue]
    assert streams._create_query(client, database, queue) is None
    assert streams._create_query(client, database, view) is None
    assert f"'{group}'" in streams._create_query(client, queues, queue)


def test_another_wire_format_is_replaced_once_the_old_consumer_has_loaded_what_the_earlier_job_wrote(own_stack):
    """A deployment that changes an output's wire format (the archive went from JSON to RowBinary):
    the topic still holds records in the old format that ClickHouse has not loaded yet. `ensure`
    lets the old consumer load them, then replaces it; its group's offsets carry on, so every record
    of both formats is in the table once."""
    from confluent_kafka import Producer

    from tests.integration.test_loader import _valid_event

    client = connect(own_stack)
    queues = own_stack.clickhouse.queues_database
    queue, group = streams.queue_table(EVENTS_VALID), streams.group_id(own_stack, EVENTS_VALID)
    producer = Producer({"bootstrap.servers": own_stack.kafka_bootstrap})
    for n in range(2_000):  # as the earlier job wrote them
        producer.produce(own_stack.topics.events_valid, orjson.dumps({
            "event_type": "view", "event_id": f"json-{n}", "event_time_ms": 1723506420000 + n, "post_id": 1,
            "author_id": 7, "viewer_id": n, "surface": "home", "client": "ios", "action": "", "late": 0}))
    assert producer.flush(30) == 0
    earlier = replace(EVENTS_VALID, wire="JSONEachRow")
    client.execute(f"CREATE DATABASE IF NOT EXISTS {queues}")
    client.execute(streams._queue_sql(earlier, queues),
                   {"broker": own_stack.kafka_bootstrap, "topic": own_stack.topics.events_valid, "group": group})
    client.execute(streams.view_sql(earlier, queues, own_stack.clickhouse.database))

    assert queue in streams.ensure(client, own_stack)
    (loaded,), = client.execute("SELECT count() FROM events_raw")
    assert loaded == 2_000, "the old consumer loaded every JSON record before it was replaced"
    assert "'RowBinary'" in streams._create_query(client, queues, queue)

    producer.produce(own_stack.topics.events_valid, _valid_event(1))  # as the job writes them now
    assert producer.flush(30) == 0
    poll(lambda: client.execute("SELECT count() FROM events_raw")[0][0] >= 2_001, 60, "the RowBinary record")
    assert client.execute("SELECT count(), uniqExact(event_id) FROM events_raw") == [(2_001, 2_001)]
