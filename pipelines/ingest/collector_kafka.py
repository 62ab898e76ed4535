"""The collector's side of Kafka: one idempotent producer per worker and the batches waiting for its acks."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from pipelines.config import Settings
from pipelines.ingest.collector_metrics import Metrics
from pipelines.ingest.collector_settings import CollectorSettings

log = logging.getLogger("viewcount.collector")


class Batch:
    """The events of one request on their way to Kafka: done when every one was acknowledged."""

    __slots__ = ("loop", "future", "pending", "errors", "metrics")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, metrics: Metrics):
        self.loop = loop
        self.future = loop.create_future()
        self.pending = count  # decremented by the poll thread only
        self.errors: list[str] = []
        self.metrics = metrics

    def delivered(self, err, msg) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            latency = msg.latency()
            if latency is not None:
                self.metrics.observe_delivery(latency)
        self.pending -= 1
        if self.pending == 0:
            self.loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class KafkaSide:
    """One idempotent producer per worker, served by a thread that polls for acknowledgements."""

    def __init__(self, settings: Settings, config: CollectorSettings, metrics: Metrics):
        from confluent_kafka import Producer

        self.settings = settings
        self.metrics = metrics
        self.down_since: float | None = None
        self.producer = Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": config.linger_ms,
            "compression.type": "lz4",
            # The queue may hold the admitted events and a full batch more; admission keeps it there.
            "queue.buffering.max.messages": config.max_queued_events + config.max_events_per_batch,
            "queue.buffering.max.kbytes": 256 * 1024,
            # A message Kafka has not taken by then fails (the request answered 503 long before).
            "message.timeout.ms": max(30_000, int(config.ack_timeout_s * 3000)),
            "error_cb": self._error,
        })
        self.running = True
        self.thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self.thread.start()

    def _error(self, err) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.down_since is None:
                log.warning("Kafka at %s: all brokers down", self.settings.kafka_bootstrap)
                self.down_since = time.monotonic()
        else:
            log.warning("Kafka at %s: %s", self.settings.kafka_bootstrap, err)

    def _poll(self) -> None:
        last_snapshot = last_probe = 0.0
        while self.running:
            self.producer.poll(0.05)
            now = time.monotonic()
            if now - last_snapshot >= 1.0:
                last_snapshot = now
                try:
                    self.metrics.write_snapshot()
                except OSError as exc:
                    log.warning("metrics snapshot: %s", exc)
            if self.down_since is not None and now - last_probe >= 1.0:
                last_probe = now
                self._probe()

    def _probe(self) -> None:
        """While Kafka is believed down, ask it for metadata; an answer lifts the 503s."""
        try:
            self.producer.list_topics(timeout=1.0)
        except Exception:  # noqa: BLE001 - still down
            return
        log.warning("Kafka at %s answers again", self.settings.kafka_bootstrap)
        self.down_since = None

    def queued(self) -> int:
        return len(self.producer)

    def close(self, timeout_s: float = 10.0) -> None:
        self.running = False
        self.thread.join(5)
        self.producer.flush(timeout_s)
