"""Committed offsets asked again while a group's coordinator settles (a fake consumer: no broker)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipelines.stream.kafka import committed_offsets


class _Consumer:
    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.asked = 0

    def committed(self, partitions, timeout):
        self.asked += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_a_coordinator_still_loading_is_asked_again():
    consumer = _Consumer(KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
                         KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)), ["offsets"])
    assert committed_offsets(consumer, []) == ["offsets"]
    assert consumer.asked == 3


def test_any_other_error_is_raised_at_once():
    consumer = _Consumer(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), ["never"])
    with pytest.raises(KafkaException):
        committed_offsets(consumer, [])
    assert consumer.asked == 1
