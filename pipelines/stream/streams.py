"""ClickHouse's own Kafka consumers for the job's high-volume outputs (sql/streams/).

Every valid event and every rollup row goes from the job's Kafka sinks (at least once) straight into
ClickHouse: a Kafka engine table per output reads the topic (read_committed) and a materialized
view writes its blocks into the target table. No Python touches those records. The consumers live
in ClickHouse (in a database of their own, `<database>_queues`, that no reader may use: a SELECT of
a Kafka table consumes), so they keep loading whether or not a runner is up; `ensure` creates them for a
topic prefix (again, if they point at another prefix) and `Progress` says how far they are.

On a ClickHouse cluster (VIEWCOUNT_CLICKHOUSE_CLUSTER, pipelines/store/shapes.py) every server has
the same consumers, ON CLUSTER, in the one consumer group of each output: Kafka spreads the topic's
partitions over them, and each view writes into the output's Distributed table, which sends every
row to its shard, synchronously (insert_distributed_sync in the servers' default profile, which the
Kafka engine inserts with: stack/clickhouse/cluster-users.xml.template). A server that dies leaves
its group; Kafka gives its partitions to the others, which go on from its last commit (the rows
it wrote but had not committed are written again: ReplacingMergeTree keeps one).
"""

from __future__ import annotations

import logging
import time

from pipelines.config import REPO_ROOT, Settings, queues_database
from pipelines.store import shapes
from pipelines.store.migrate import KAFKA_TABLE_DROPS
from pipelines.store.tables import FILLED_BY_CLICKHOUSE, LOAD_EXPRESSIONS, OUTPUTS, TABLE_COLUMNS, Output
from pipelines.stream.kafka import TopicEnds

log = logging.getLogger("viewcount.streams")
SQL_DIR = REPO_ROOT / "sql" / "streams"
LOADED_BY_CLICKHOUSE = tuple(o for o in OUTPUTS if o.clickhouse_loads)
DRAIN_TIMEOUT_S = 300.0  # a replaced consumer's last records: ClickHouse loads ~50,000 a second


def queue_table(output: Output) -> str:
    return f"{output.name}_queue"


def loader_view(output: Output) -> str:
    return f"{output.name}_loader"


def group_id(settings: Settings, output: Output, consumer: str = "clickhouse") -> str:
    return f"{settings.topics.prefix}.{consumer}.{output.name}"


def _on_cluster(shape: shapes.ClusterShape | None) -> str:
    return f" ON CLUSTER {shape.cluster}" if shape else ""


def _queue_sql(output: Output, queues: str, shape: shapes.ClusterShape | None = None) -> str:
    columns = ", ".join(f"{f.name} {f.clickhouse}" for f in output.fields)
    return ((SQL_DIR / "queue.sql").read_text()
            .replace("{queue}", f"{queues}.{queue_table(output)}{_on_cluster(shape)}")
            .replace("{columns}", columns).replace("{format}", output.wire))


def view_sql(output: Output, queues: str, database: str, shape: shapes.ClusterShape | None = None) -> str:
    """The materialized view (in `queues`) that writes the Kafka table's blocks into the output's
    table (in `database`): every column of the table (pipelines.store.tables), from the field of
    its name or its expression. On a cluster: on every server, into the Distributed table."""
    expressions = LOAD_EXPRESSIONS.get(output.name, {})
    fields = set(output.field_names)
    select = []
    for column in (*TABLE_COLUMNS[output.table], *FILLED_BY_CLICKHOUSE.get(output.table, ())):
        if column in expressions:
            select.append(f"{expressions[column]} AS {column}")
        elif column in fields:
            select.append(column)
        else:  # 18.16 fills no default for a column the view leaves out: it refuses the block
            raise ValueError(f"{output.table}.{column} has neither a field of {output.name} nor a load expression")
    return ((SQL_DIR / "loader_view.sql").read_text()
            .replace("{view}", f"{queues}.{loader_view(output)}{_on_cluster(shape)}")
            .replace("{table}", f"{database}.{output.table}").replace("{select}", ", ".join(select))
            .replace("{queue}", f"{queues}.{queue_table(output)}"))


def _columns(client, database: str, table: str) -> list[tuple[str, str]]:
    return [tuple(row) for row in client.execute(
        "SELECT name, type FROM system.columns WHERE database = %(db)s AND table = %(table)s",
        {"db": database, "table": table})]  # in the table's order


def _create_query(client, database: str, name: str) -> str | None:
    found = client.execute("SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name = %(name)s",
                           {"db": database, "name": name})
    return found[0][0] if found else None


def _drop_consumer(client, database: str, output: Output, shape: shapes.ClusterShape | None = None) -> None:
    """Drop a consumer (its view, then its Kafka table) from `database` (on every server of a
    cluster), one Kafka-table drop of this process at a time (migrate.KAFKA_TABLE_DROPS)."""
    with KAFKA_TABLE_DROPS:
        client.execute(f"DROP TABLE IF EXISTS {database}.{loader_view(output)}{_on_cluster(shape)}")
        client.execute(f"DROP TABLE IF EXISTS {database}.{queue_table(output)}{_on_cluster(shape)}")


def ensure(client, settings: Settings, consumer: str = "clickhouse") -> list[str]:
    """Create the Kafka tables and their views (idempotent) in the queues database of the client's
    database (ClickHouseTarget.queues_database: no reader may use it); a consumer left pointing at
    another topic (another prefix), or with other columns or another wire format than the job's
    output now has (a deployment of a new version), is replaced, and one left in the client's
    database itself (where they lived before) is moved. Returns what it created. `consumer` names
    the consumer groups (another name reads the topics again from the start). A replaced consumer's
    group stays: the new consumer goes on from the old one's committed offsets, once the old one has
    loaded what its topic holds (written by the earlier job, in its shape). With a cluster configured, all of
    it ON CLUSTER (see the module's docstring); what exists is read on the client's server."""
    ((database,),) = client.execute("SELECT currentDatabase()")
    shape = shapes.configured(settings)
    queues = queues_database(database)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {queues}{_on_cluster(shape)}")
    created = []
    for output in LOADED_BY_CLICKHOUSE:
        topic = getattr(settings.topics, output.topic)
        queue = queue_table(output)
        if _create_query(client, database, queue) is not None:
            log.info("moving ClickHouse's consumer %s from %s to %s, out of the readers' reach", queue, database,
                     queues)
            _drop_consumer(client, database, output, shape)
        existing = _create_query(client, queues, queue)
        stale = None
        same_topic = existing is not None and f"'{topic}'" in existing
        if existing is not None and not same_topic:
            stale = f"reads another topic than {topic}"
        elif existing is not None and _columns(client, queues, queue) != [(f.name, f.clickhouse)
                                                                           for f in output.fields]:
            stale = "has other columns than the job's output"
        elif existing is not None and f"'{output.wire}'" not in existing:
            stale = f"reads another format than {output.wire}"
        if stale:
            log.info("replacing ClickHouse's consumer %s: it %s", queue, stale)
            if same_topic:
                # Its topic holds what the earlier job wrote, in its columns and format: that
                # consumer loads it all before the new one takes its group's offsets on.
                _wait_loaded(settings, output, consumer, queue)
            _drop_consumer(client, queues, output, shape)
            existing = None
        if existing is None:
            client.execute(_queue_sql(output, queues, shape), {"broker": settings.kafka_bootstrap, "topic": topic,
                                                        "group": group_id(settings, output, consumer)})
            created.append(queue)
        # The one materialized view over the Kafka table: a second one made 18.16 abort when the
        # table was dropped (docs/design.md); other readers follow the topic (pipelines.stream.change_feed).
        client.execute(view_sql(output, queues, database, shape))
    return created


def _wait_loaded(settings: Settings, output: Output, consumer: str, queue: str) -> None:
    """Until ClickHouse's consumer of `output` has committed up to where its topic ends now."""
    progress = Progress(settings, consumer, (output,))
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (left := progress.remaining()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        progress.close()
    if left:
        raise RuntimeError(
            f"ClickHouse's consumer {queue} has {left} records the earlier job wrote still to load after "
            f"{DRAIN_TIMEOUT_S:.0f} s, and replacing it now would leave them unread: see why in ClickHouse's log "
            "(.state/clickhouse/), then start the run again")


class Progress:
    """How many records of the job's outputs ClickHouse's consumers have still to commit, up to
    where the topics end now (call once the job has stopped writing them)."""

    def __init__(self, settings: Settings, consumer: str = "clickhouse",
                 outputs: tuple[Output, ...] = LOADED_BY_CLICKHOUSE):
        self._ends = [TopicEnds(settings, group_id(settings, o, consumer), [getattr(settings.topics, o.topic)])
                       for o in outputs]

    @property
    def total(self) -> int:
        """Offsets up to the ends (records, and the transactions' markers)."""
        return sum(sum(ends.ends.values()) for ends in self._ends)

    def remaining(self) -> int:
        return sum(ends.remaining() for ends in self._ends)

    def close(self) -> None:
        for ends in self._ends:
            ends.close()
