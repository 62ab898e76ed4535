"""ClickHouse's Kafka consumers follow the job's outputs: `streams.ensure` keeps them in their own
database (no reader may use it: reading a Kafka table consumes), moves one left where earlier
versions made them, and replaces one whose columns are not the output's any more (a deployment of a
new version), keeping its consumer group either way."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.store.clickhouse import connect
from pipelines.store.tables import EVENTS_VALID
from pipelines.stream import streams

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
