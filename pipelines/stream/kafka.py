"""Kafka offsets as progress: where topics end, and how far a consumer group has committed."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable

from pipelines.config import Settings

# A group coordinator that moves or is still loading (a fresh or restarting broker) answers
# committed-offset requests with these for a moment: ask again until this deadline.
COORDINATOR_WAIT_S = 60.0
# How long a probe of one offset waits for the broker's answer.
PROBE_WAIT_S = 30.0
# The runner's group members (the loader, the change feed). A member killed without leaving (kill -9,
# a lost box) holds its partitions until its session times out, and the member that replaces it gets
# none until then: at librdkafka's default of 45 s, a run restarted after a crash loaded nothing for
# its first 45 s (measured in the kill test). The broker's floor is 6 s (group.min.session.timeout.ms);
# the heartbeat, from librdkafka's own thread, goes three times a session.
GROUP_MEMBER = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 3_000}


def committed_offsets(consumer, partitions: list, timeout_s: float = 30) -> list:
    """consumer.committed(partitions), asked again while the group's coordinator is moving or
    loading (retriable errors); any other error, or one that outlasts COORDINATOR_WAIT_S, is raised."""
    import time

    from confluent_kafka import KafkaError, KafkaException

    settling = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                KafkaError.COORDINATOR_NOT_AVAILABLE}
    deadline = time.monotonic() + COORDINATOR_WAIT_S
    while True:
        try:
            return consumer.committed(partitions, timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            again = isinstance(error, KafkaError) and (error.code() in settling or error.retriable())
            if not again or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # backoff while the coordinator settles, not synchronisation


@functools.cache
def holds_a_record(bootstrap: str, topic: str, partition: int, offset: int) -> bool:
    """Whether a read_committed consumer is handed a record at `offset` or after it. A transaction
    ends with a marker that takes an offset of its own and is never handed on, so a consumer that
    stopped one short of a topic's end has read it all when the last offset is a marker (a topic
    written with transactions, as the job's outputs were before issue 18), and has a record left
    when it is not (one written at least once). Asked only of that last offset; the answer of an
    offset never changes, hence the cache."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "viewcount.tail-probe", "enable.auto.commit": False,
                      "isolation.level": "read_committed", "enable.partition.eof": True})
    try:
        probe.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + PROBE_WAIT_S
        while time.monotonic() < deadline:
            message = probe.poll(0.5)
            if message is None:
                continue
            if message.error() is None:
                return True
            if message.error().code() == KafkaError._PARTITION_EOF:
                return False
            raise KafkaException(message.error())
        raise TimeoutError(f"{topic}[{partition}] at offset {offset} was not readable within {PROBE_WAIT_S:.0f} s")
    finally:
        probe.close()


class TopicEnds:
    """The end offsets of some topics when created, and how many records a consumer group has
    still to commit up to them (a group one short of an end that is a transaction's marker has
    read it all: `holds_a_record`)."""

    def __init__(self, settings: Settings, group_id: str, topics: Iterable[str]):
        from confluent_kafka import Consumer

        self.group_id = group_id
        self._bootstrap = settings.kafka_bootstrap
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
            "enable.auto.commit": False, "isolation.level": "read_committed",
        })
        self.ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(
                    f"topic {topic} is not readable at {settings.kafka_bootstrap}: {metadata.error}: "
                    "run `make up` (it creates the topics), or check VIEWCOUNT_TOPIC_PREFIX")
            for partition in metadata.partitions:
                self.ends[(topic, partition)] = 0
        self.read_ends()

    def read_ends(self) -> None:
        """The topics' ends now (live, they move on)."""
        from confluent_kafka import TopicPartition

        for topic, partition in self.ends:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            self.ends[(topic, partition)] = high

    def remaining(self, read: dict[tuple[str, int], int] | None = None) -> int:
        """Records between the group's committed offsets and the ends (0: committed up to them);
        `read` may put a partition further than its commit (what its consumer has read)."""
        from confluent_kafka import TopicPartition

        read = read or {}
        wanted = [TopicPartition(t, p) for (t, p), end in self.ends.items() if end > 0]
        committed = committed_offsets(self._consumer, wanted) if wanted else []
        left = 0
        for tp in committed:
            end = self.ends[(tp.topic, tp.partition)]
            at = max(tp.offset, read.get((tp.topic, tp.partition), 0), 0)
            if at == end - 1 and not holds_a_record(self._bootstrap, tp.topic, tp.partition, at):
                continue
            left += max(end - at, 0)
        return left

    def close(self) -> None:
        self._consumer.close()


class CommittedOffsets:
    """Where another consumer group (e.g. ClickHouse's Kafka engine) has committed, without joining it."""

    def __init__(self, settings: Settings, group_id: str):
        from confluent_kafka import Consumer

        self._consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group_id,
                                   "enable.auto.commit": False})

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """partition -> the group's next offset to read (-1: nothing committed)."""
        from confluent_kafka import TopicPartition

        found = committed_offsets(self._consumer, [TopicPartition(topic, p) for p in partitions], timeout_s=10)
        return {tp.partition: tp.offset for tp in found}

    def close(self) -> None:
        self._consumer.close()


def partition_bounds(bootstrap: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (first offset, end) as a read_committed consumer sees them, for all the
    partitions in one ListOffsets round. Asked of a consumer one partition at a time, each answer
    waited behind that consumer's pending fetch (up to fetch.wait.max.ms, 500 ms): 3.5 s for the
    job's eight output partitions at the end of every bounded run."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    asked = {spec: admin.list_offsets({TopicPartition(t, p): getattr(OffsetSpec, spec)() for t, p in partitions},
                                      isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
             for spec in ("earliest", "latest")}
    answers = {spec: {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
               for spec, futures in asked.items()}
    return {key: (answers["earliest"][key], answers["latest"][key]) for key in partitions}


def caught_up(consumer, bootstrap: str) -> bool:
    """True when every partition assigned to a subscribed consumer has been read to its end (ask
    after an empty poll).

    A transactional producer writes a commit marker after its records; a consumer may stop just
    before that last marker, so one offset short of an end that is a marker counts as the end
    (`holds_a_record`). A partition the
    consumer has not read a record from has no position yet: where its group committed (a previous
    run, e.g. before a crash) is then how far it has been read.
    """
    from confluent_kafka import TopicPartition

    assignment = consumer.assignment()
    if not assignment:
        return False
    positions = consumer.position(assignment)
    unread = [TopicPartition(p.topic, p.partition) for p in positions if p.offset < 0]
    committed = {(c.topic, c.partition): c.offset
                 for c in (committed_offsets(consumer, unread, timeout_s=10) if unread else [])}
    bounds = partition_bounds(bootstrap, [(p.topic, p.partition) for p in positions])
    for position in positions:
        low, high = bounds[(position.topic, position.partition)]
        current = position.offset
        if current < 0:
            current = committed.get((position.topic, position.partition), -1)
        current = max(current, low)
        if current < high - 1 or (current == high - 1
                                  and holds_a_record(bootstrap, position.topic, position.partition, current)):
            return False
    return True
