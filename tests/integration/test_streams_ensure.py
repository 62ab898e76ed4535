"""ClickHouse's Kafka consumers follow the job's outputs: `streams.ensure` replaces a consumer whose
columns are not the output's any more (a deployment of a new version), keeping its consumer group."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.store.clickhouse import connect
from pipelines.store.tables import EVENTS_VALID
from pipelines.stream import streams

pytestmark = pytest.mark.integration


def test_a_consumer_with_old_columns_is_replaced_and_one_up_to_date_is_left(own_stack):
    client = connect(own_stack)
    assert sorted(streams.ensure(client, own_stack)) == sorted(
        streams.queue_table(o) for o in streams.LOADED_BY_CLICKHOUSE)
    assert streams.ensure(client, own_stack) == [], "nothing to do when every consumer is current"
    # The archive's consumer as an earlier version created it: without the `late` column.
    queue = streams.queue_table(EVENTS_VALID)
    earlier = replace(EVENTS_VALID, fields=tuple(f for f in EVENTS_VALID.fields if f.name != "late"))
    client.execute(f"DROP TABLE {streams.loader_view(EVENTS_VALID)}")
    client.execute(f"DROP TABLE {queue}")
    client.execute(streams._queue_sql(earlier), {"broker": own_stack.kafka_bootstrap,
                                                 "topic": own_stack.topics.events_valid,
                                                 "group": streams.group_id(own_stack, EVENTS_VALID)})
    assert streams.ensure(client, own_stack) == [queue]
    assert streams._columns(client, queue) == [(f.name, f.clickhouse) for f in EVENTS_VALID.fields]
    (create,), = client.execute("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                                "AND name = %(name)s", {"name": queue})
    assert f"'{streams.group_id(own_stack, EVENTS_VALID)}'" in create, "the same consumer group goes on"
    assert client.execute("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = %(n)s",
                          {"n": streams.loader_view(EVENTS_VALID)}) == [(1,)]
