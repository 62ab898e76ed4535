"""The collector's own knobs (VIEWCOUNT_COLLECTOR_*), read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VIEWCOUNT_COLLECTOR_{name}", default)


@dataclass(frozen=True)
class CollectorSettings:
    """The collector's own knobs (VIEWCOUNT_COLLECTOR_*); Kafka, topics and time rules come from Settings."""

    host: str = "127.0.0.1"
    port: int = 18080
    workers: int = 2
    max_body_bytes: int = 1024 * 1024          # received, and again after gzip is undone
    max_events_per_batch: int = 1000
    max_event_bytes: int = 16 * 1024           # one event as forwarded to Kafka
    ack_timeout_s: float = 10.0                # longer without Kafka's acknowledgement: 503
    max_queued_events: int = 100_000           # per worker: events handed to the producer, not yet acknowledged
    retry_after_s: int = 2
    linger_ms: int = 2
    max_connections: int = 512                 # per worker; more get uvicorn's 503 (bounds requests in flight)
    keys: str = ""                             # "name=key,name2=key2"; else the keys file
    keys_file: Path | None = None
    # Per client (write key name) and per worker: above what a worker can process (~10 us of CPU an
    # event), so the project's own loads (bench.collector, the night via HTTP) are never limited;
    # an operator sets what one client may send. 0: no limit.
    key_rate_events_per_s: float = 100_000.0
    key_burst_events: int = 100_000            # at least max_events_per_batch, or a full batch never passes

    def __post_init__(self) -> None:
        if self.key_rate_events_per_s > 0 and self.key_burst_events < self.max_events_per_batch:
            raise ValueError(f"VIEWCOUNT_COLLECTOR_KEY_BURST_EVENTS={self.key_burst_events} is less than "
                             f"VIEWCOUNT_COLLECTOR_MAX_EVENTS_PER_BATCH={self.max_events_per_batch}: a full batch "
                             "could never pass the rate limit; raise the burst or lower the batch size")

    @classmethod
    def from_env(cls, settings: Settings, **overrides) -> CollectorSettings:
        base = cls()
        values = dict(
            host=_env("HOST", base.host),
            port=int(_env("PORT", str(base.port))),
            workers=int(_env("WORKERS", str(base.workers))),
            max_body_bytes=int(_env("MAX_BODY_BYTES", str(base.max_body_bytes))),
            max_events_per_batch=int(_env("MAX_EVENTS_PER_BATCH", str(base.max_events_per_batch))),
            max_event_bytes=int(_env("MAX_EVENT_BYTES", str(base.max_event_bytes))),
            ack_timeout_s=float(_env("ACK_TIMEOUT_S", str(base.ack_timeout_s))),
            max_queued_events=int(_env("MAX_QUEUED_EVENTS", str(base.max_queued_events))),
            retry_after_s=int(_env("RETRY_AFTER_S", str(base.retry_after_s))),
            linger_ms=int(_env("LINGER_MS", str(base.linger_ms))),
            max_connections=int(_env("MAX_CONNECTIONS", str(base.max_connections))),
            keys=_env("KEYS", ""),
            keys_file=Path(_env("KEYS_FILE", str(default_keys_file(settings)))),
            key_rate_events_per_s=float(_env("KEY_RATE_EVENTS_PER_S", str(base.key_rate_events_per_s))),
            key_burst_events=int(_env("KEY_BURST_EVENTS", str(base.key_burst_events))),
        )
        values.update(overrides)
        return cls(**values)


def default_keys_file(settings: Settings) -> Path:
    return settings.state_dir / "collector" / "keys"
