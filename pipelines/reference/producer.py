"""Sends a simulated night to Kafka, in arrival order, as a fleet of clients would."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from pipelines.config import Settings
from pipelines.reference.night import TYPE_NAMES, Night
from pipelines.reference.night_events import night_events

PROGRESS_EVERY_RECORDS = 10_000


def record_key(event_type: str, event: dict) -> bytes:
    """An event's Kafka key: posts' events share a partition per post; a Space's presence spreads by listener."""
    return str(event["listener_id"] if event_type == "presence" else event["post_id"]).encode()


def send(producer, topic: str, value: bytes, key: bytes, **options) -> None:
    """producer.produce(), waiting while the client's queue is full (`options`: on_delivery=, timestamp=)."""
    while True:
        try:
            producer.produce(topic, value, key, **options)
            return
        except BufferError:
            producer.poll(0.05)


def produce(settings: Settings, night: Night, rate: float | None = None,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Send the night to Kafka in arrival order, keyed by post_id; returns records delivered.
    `progress(sent, total)` is called every PROGRESS_EVERY_RECORDS records and at the end."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    })
    failures: list[str] = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    topics = {name: settings.topics.source(name) for name in TYPE_NAMES}
    total = len(night.kind)
    started = time.monotonic()
    for sent, (_, event_type, event) in enumerate(night_events(night), start=1):
        value = orjson.dumps(event)
        send(producer, topics[event_type], value, record_key(event_type, event), on_delivery=delivered)
        if sent % PROGRESS_EVERY_RECORDS == 0:
            producer.poll(0)
            if progress:
                progress(sent, total)
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing to the offered load, not synchronisation
    remaining = producer.flush(120)
    if remaining or failures:
        raise RuntimeError(
            f"Kafka at {settings.kafka_bootstrap} did not take {remaining + len(failures)} of "
            f"{total} records (first error: {failures[:1]}): is the broker up? run `make up`"
        )
    if progress:
        progress(total, total)
    return total
