"""Kafka offsets as progress: where topics end, and how far a consumer group has committed."""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.config import Settings


class TopicEnds:
    """The end offsets of some topics when created, and how many records a consumer group has
    still to commit up to them. A transactional producer closes its records with a commit marker
    that takes an offset of its own and is never handed to a consumer, so on a topic written with
    transactions (`transactional=True`) a group committed one short of the end has read it all."""

    def __init__(self, settings: Settings, group_id: str, topics: Iterable[str], transactional: bool = False):
        from confluent_kafka import Consumer, TopicPartition

        self.group_id = group_id
        self.slack = 1 if transactional else 0
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
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                self.ends[(topic, partition)] = high

    def remaining(self) -> int:
        """Records between the group's committed offsets and the ends (0: committed up to them)."""
        from confluent_kafka import TopicPartition

        wanted = [TopicPartition(t, p) for (t, p), end in self.ends.items() if end > 0]
        committed = self._consumer.committed(wanted, timeout=30) if wanted else []
        return sum(max(self.ends[(tp.topic, tp.partition)] - self.slack - max(tp.offset, 0), 0)
                   for tp in committed)

    def close(self) -> None:
        self._consumer.close()
