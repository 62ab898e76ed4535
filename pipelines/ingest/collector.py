"""`viewcount collect`: the HTTP edge where clients post batches of events on their way to Kafka.

POST /v1/events takes a JSON array or NDJSON of events (gzip bodies too, and the text/plain body
of a browser's navigator.sendBeacon). Each event names its type and schema version in two
envelope fields (`event_type`, `schema_version`), which the collector removes: what reaches the
source topic is the event as the generator writes it, keyed as the generator keys it. Every
event is validated with the job's rules (pipelines/ingest/validation.py); a rejected one goes to the
dead-letter topic with the client's key name and the reason, and does not sink the batch.

A 2xx means durable: it is sent only once Kafka acknowledged every event of the batch (idempotent
producer, acks from all in-sync replicas). When Kafka is slow or down the answer is 503 with
Retry-After, never an unbounded buffer. docs/collector.md has the protocol and the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipelines.config import EVENT_TYPES, Settings
from pipelines.ingest import schemas, validation

log = logging.getLogger("viewcount.collector")

PATH = "/v1/events"
ENVELOPE_TYPE, ENVELOPE_VERSION = "event_type", "schema_version"
KNOWN_VERSIONS = (schemas.CURRENT_VERSION,)
BODY_TYPES = {"application/json", "application/x-ndjson", "application/jsonlines", "application/x-jsonlines",
              "text/plain", ""}
KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
# Reasons the collector adds to the job's (the envelope): fixed text, so a metric label stays bounded.
NO_EVENT_TYPE = f"event_type must be one of {', '.join(EVENT_TYPES)}"
UNKNOWN_VERSION = "schema_version is not a known version of its event_type"
FIRST_REASONS = 10  # rejects described one by one in a response
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        )
        values.update(overrides)
        return cls(**values)


def default_keys_file(settings: Settings) -> Path:
    return settings.state_dir / "collector" / "keys"


def load_write_keys(config: CollectorSettings) -> dict[bytes, str]:
    """sha256(key) -> key name, from VIEWCOUNT_COLLECTOR_KEYS or the keys file (`name key` per line)."""
    pairs: list[tuple[str, str]] = []
    if config.keys:
        for item in config.keys.split(","):
            name, sep, key = item.strip().partition("=")
            if not sep:
                raise ValueError("VIEWCOUNT_COLLECTOR_KEYS must look like name=key,name2=key2")
            pairs.append((name, key))
    elif config.keys_file is not None and config.keys_file.exists():
        for number, line in enumerate(config.keys_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, key = line.partition(" ")
            if not key.strip():
                raise ValueError(f"{config.keys_file}:{number}: a line is `name key`")
            pairs.append((name, key.strip()))
    if not pairs:
        where = config.keys_file or "the keys file"
        raise ValueError(f"no write keys: set VIEWCOUNT_COLLECTOR_KEYS=name=key (comma separated) or add "
                         f"`name key` lines to {where} (`viewcount collect --new-key NAME` writes one)")
    keys = {}
    for name, key in pairs:
        if not KEY_NAME.match(name):
            raise ValueError(f"write key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if len(key) < 16:
            raise ValueError(f"write key of {name!r} is shorter than 16 characters")
        keys[hashlib.sha256(key.encode()).digest()] = name
    return keys


def new_write_key(settings: Settings, name: str) -> str:
    """Add a fresh key for client `name` to the keys file (mode 600) and return it."""
    if not KEY_NAME.match(name):
        raise ValueError(f"write key name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    path = default_keys_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as out:
        out.write(f"{name} {key}\n")
    return key


class Metrics:
    """Counters and one histogram, in Prometheus text format; summed over the worker processes
    through small snapshot files (each worker writes its own about once a second)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.delivery = [0] * (len(DELIVERY_BUCKETS) + 1)
        self.delivery_sum = 0.0
        self.lock = threading.Lock()

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def observe_delivery(self, seconds: float) -> None:
        # Called from the producer's poll thread only.
        self.delivery[bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.delivery_sum += seconds

    def snapshot(self) -> dict:
        with self.lock:
            counters = [[name, list(labels), value] for (name, labels), value in self.counters.items()]
        return {"counters": counters, "delivery": list(self.delivery), "delivery_sum": self.delivery_sum}

    def write_snapshot(self) -> None:
        if self.folder is None:
            return
        path = self.folder / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        tmp.replace(path)

    def merged(self) -> dict:
        snapshots = {os.getpid(): self.snapshot()}
        if self.folder is not None:
            for path in self.folder.glob("*.json"):
                pid = int(path.stem)
                if pid not in snapshots:
                    try:
                        snapshots[pid] = orjson.loads(path.read_bytes())
                    except (OSError, orjson.JSONDecodeError):
                        continue
        counters: dict[tuple, float] = {}
        delivery = [0] * (len(DELIVERY_BUCKETS) + 1)
        delivery_sum = 0.0
        for snap in snapshots.values():
            for name, labels, value in snap["counters"]:
                key = (name, tuple(tuple(pair) for pair in labels))
                counters[key] = counters.get(key, 0) + value
            delivery = [a + b for a, b in zip(delivery, snap["delivery"], strict=True)]
            delivery_sum += snap["delivery_sum"]
        return {"counters": counters, "delivery": delivery, "delivery_sum": delivery_sum,
                "workers": len(snapshots)}

    def text(self, queued: int) -> str:
        merged = self.merged()
        helps = {
            "viewcount_collector_requests_total": "HTTP requests to the collector, by path and status code.",
            "viewcount_collector_events_accepted_total": "Events acknowledged by Kafka on their source topic.",
            "viewcount_collector_events_rejected_total": "Events sent to the dead-letter topic, by reason.",
        }
        lines = []
        for name, text in helps.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            for (metric, labels), value in sorted(merged["counters"].items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        name = "viewcount_collector_kafka_delivery_seconds"
        lines += [f"# HELP {name} From handing an event to the producer to Kafka's acknowledgement.",
                  f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip((*DELIVERY_BUCKETS, "+Inf"), merged["delivery"], strict=True):
            running += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines += [f"{name}_sum {merged['delivery_sum']:.6f}", f"{name}_count {running}"]
        lines += ["# HELP viewcount_collector_kafka_queued_events Events waiting for Kafka in this worker.",
                  "# TYPE viewcount_collector_kafka_queued_events gauge",
                  f"viewcount_collector_kafka_queued_events {queued}",
                  "# HELP viewcount_collector_workers Worker processes whose counters are summed here.",
                  "# TYPE viewcount_collector_workers gauge",
                  f"viewcount_collector_workers {merged['workers']}"]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"


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


class Refusal(Exception):
    """A request answered without writing anything: status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Verdicts:
    accepted: list[tuple[str, bytes, bytes]] = field(default_factory=list)   # topic, key, value
    rejected: list[tuple[int, str, str]] = field(default_factory=list)        # position, reason, payload


class Collector:
    """The request logic, apart from the HTTP framework: decode, check, route, wait for Kafka."""

    def __init__(self, settings: Settings, config: CollectorSettings, metrics_folder: Path | None = None):
        self.settings = settings
        self.config = config
        self.keys = load_write_keys(config)
        self.metrics = Metrics(metrics_folder)
        self.topics = {t: settings.topics.source(t) for t in EVENT_TYPES}
        self.validators = {t: validation.validator(t) for t in EVENT_TYPES}
        self.kafka: KafkaSide | None = None

    def start(self) -> None:
        self.kafka = KafkaSide(self.settings, self.config, self.metrics)

    def close(self) -> None:
        if self.kafka is not None:
            self.kafka.close()

    def key_name(self, headers, query) -> str:
        key = query.get("key") or headers.get("x-viewcount-key")
        auth = headers.get("authorization", "")
        if not key and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        if not key:
            raise Refusal(401, "no write key: send `Authorization: Bearer <key>` (or ?key=<key> from "
                               "navigator.sendBeacon)", {"WWW-Authenticate": "Bearer"})
        name = self.keys.get(hashlib.sha256(key.encode()).digest())
        if name is None:
            raise Refusal(401, "write key not recognised: ask the collector's operator for a key",
                          {"WWW-Authenticate": "Bearer"})
        return name

    def decode_body(self, body: bytes, encoding: str, content_type: str) -> list[tuple[object, bytes | None]]:
        """(parsed event or None, its raw bytes when it had a line of its own) per event."""
        limit = self.config.max_body_bytes
        encoding = encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflate.decompress(body, limit + 1)
            except zlib.error as exc:
                raise Refusal(400, f"body is not valid gzip ({exc})") from exc
            if len(body) > limit or inflate.unconsumed_tail:
                raise Refusal(413, f"body is larger than {limit} bytes once decompressed (max_body_bytes)")
        elif encoding not in ("", "identity"):
            raise Refusal(415, f"Content-Encoding {encoding!r} is not supported: send gzip or none")
        mime = content_type.split(";")[0].strip().lower()
        if mime not in BODY_TYPES:
            raise Refusal(415, f"Content-Type {mime!r} is not supported: send application/json (an array), "
                               "application/x-ndjson or text/plain")
        start = body.lstrip()[:1]
        if start == b"[":
            parsed = validation.parse(body)
            if not isinstance(parsed, list):
                raise Refusal(400, "body starts with '[' but is not a JSON array: send a JSON array of events "
                                   "or one event per line (NDJSON)")
            items: list[tuple[object, bytes | None]] = [(event, None) for event in parsed]
        else:
            items = []
            for line in body.split(b"\n"):
                line = line.strip()
                if line:
                    items.append((validation.parse(line), line))
        if not items:
            raise Refusal(400, "no events in the body: send a JSON array of events or NDJSON")
        if len(items) > self.config.max_events_per_batch:
            raise Refusal(413, f"batch has {len(items)} events, more than {self.config.max_events_per_batch} "
                               "(max_events_per_batch): split it")
        return items

    def check(self, items: list[tuple[object, bytes | None]], arrival_ms: int) -> Verdicts:
        """Each event's verdict: routed (topic, key, value as forwarded) or rejected with its reason."""
        verdicts = Verdicts()
        max_event = self.config.max_event_bytes
        settings = self.settings
        for position, (event, raw) in enumerate(items):
            event_type = None
            if not isinstance(event, dict):
                reason = validation.NOT_AN_OBJECT
            else:
                # The envelope is ours, not the event's: what reaches Kafka is the event alone.
                envelope = {name: event.pop(name) for name in (ENVELOPE_TYPE, ENVELOPE_VERSION) if name in event}
                event_type = envelope.get(ENVELOPE_TYPE)
                version = envelope.get(ENVELOPE_VERSION, schemas.CURRENT_VERSION)
                if not validation.known_event_type(event_type):
                    reason = NO_EVENT_TYPE
                elif isinstance(version, bool) or version not in KNOWN_VERSIONS:
                    reason = UNKNOWN_VERSION
                else:
                    reason = self.validators[event_type](event)
                    if reason is None:
                        reason = validation.plausible_time_reason(event["event_time"], arrival_ms, settings)
                if reason is not None and raw is None:
                    event = {**envelope, **event}  # the dead letter keeps the event as the client sent it
            if reason is None:
                value = orjson.dumps(event)
                size = len(value)
            else:
                payload = raw.decode("utf-8", "replace") if raw is not None else _dumps(event)
                size = len(raw) if raw is not None else len(payload.encode())
            if size > max_event:
                raise Refusal(413, f"event at position {position} is {size} bytes, more than {max_event} "
                                   "(max_event_bytes)")
            if reason is None:
                key = event["listener_id"] if event_type == "presence" else event["post_id"]
                verdicts.accepted.append((self.topics[event_type], str(key).encode(), value))
            else:
                verdicts.rejected.append((position, reason, payload))
        return verdicts

    async def deliver(self, verdicts: Verdicts, key_name: str, request_id: int, arrival_ms: int) -> None:
        """Produce every accepted event and every dead letter; return once Kafka acknowledged all."""
        kafka = self.kafka
        assert kafka is not None, "the collector was not started"
        count = len(verdicts.accepted) + len(verdicts.rejected)
        retry = {"Retry-After": str(self.config.retry_after_s)}
        if kafka.down_since is not None:
            raise Refusal(503, f"Kafka at {self.settings.kafka_bootstrap} is unreachable: retry later", retry)
        if kafka.queued() + count > self.config.max_queued_events:
            raise Refusal(503, "Kafka is not keeping up (too many events waiting for acknowledgement): "
                               "retry later", retry)
        batch = Batch(asyncio.get_running_loop(), count, self.metrics)
        produce = kafka.producer.produce
        dead_letter_topic = self.settings.topics.dead_letter
        origin = f"collector:{key_name}"
        try:
            for topic, key, value in verdicts.accepted:
                produce(topic, value, key, on_delivery=batch.delivered, timestamp=arrival_ms)
            for position, reason, payload in verdicts.rejected:
                record = {"reason": reason, "topic": origin, "partition": position, "offset": request_id,
                          "payload": payload}
                produce(dead_letter_topic, orjson.dumps(record), key_name.encode(), on_delivery=batch.delivered,
                        timestamp=arrival_ms)
        except BufferError as exc:
            # Part of the batch may still be delivered: a retry repeats it, and the job counts an
            # event_id once.
            raise Refusal(503, "the collector's Kafka queue is full: retry later", retry) from exc
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), self.config.ack_timeout_s)
        except TimeoutError as exc:
            raise Refusal(503, f"Kafka at {self.settings.kafka_bootstrap} did not acknowledge the batch within "
                               f"{self.config.ack_timeout_s:g} s (ack_timeout_s): retry later", retry) from exc
        if batch.errors:
            raise Refusal(503, f"Kafka refused {len(batch.errors)} of {count} events (first: {batch.errors[0]}): "
                               "retry later", retry)

    async def post_events(self, headers, query, body_chunks) -> tuple[int, dict, dict[str, str]]:
        """The whole of POST /v1/events, framework-free: (status, JSON body, extra headers)."""
        arrival_ms = time.time_ns() // 1_000_000
        try:
            key_name = self.key_name(headers, query)
            limit = self.config.max_body_bytes
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise Refusal(413, f"body of {declared} bytes is larger than {limit} (max_body_bytes)")
            body = bytearray()
            async for chunk in body_chunks:
                body += chunk
                if len(body) > limit:
                    raise Refusal(413, f"body is larger than {limit} bytes (max_body_bytes)")
            items = self.decode_body(bytes(body), headers.get("content-encoding", ""),
                                     headers.get("content-type", ""))
            verdicts = self.check(items, arrival_ms)
            request_id = secrets.randbits(63)
            await self.deliver(verdicts, key_name, request_id, arrival_ms)
        except Refusal as refusal:
            self.metrics.add("viewcount_collector_requests_total", path=PATH, code=str(refusal.status))
            return refusal.status, {"error": refusal.message}, refusal.headers
        accepted_by_type: dict[str, int] = {}
        for topic, _, _ in verdicts.accepted:
            accepted_by_type[topic] = accepted_by_type.get(topic, 0) + 1
        for event_type, topic in self.topics.items():
            if topic in accepted_by_type:
                self.metrics.add("viewcount_collector_events_accepted_total", accepted_by_type[topic],
                                 event_type=event_type)
        for _, reason, _ in verdicts.rejected:
            self.metrics.add("viewcount_collector_events_rejected_total", reason=reason)
        self.metrics.add("viewcount_collector_requests_total", path=PATH, code="200")
        return 200, {
            "accepted": len(verdicts.accepted),
            "rejected": len(verdicts.rejected),
            "reasons": [{"position": p, "reason": r} for p, r, _ in verdicts.rejected[:FIRST_REASONS]],
            "request_id": f"{request_id:x}",
        }, {}


def _dumps(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, separators=(",", ":"))


def create_app(settings: Settings | None = None, config: CollectorSettings | None = None):
    """The ASGI app (Starlette), one Collector per worker process."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    settings = settings or Settings.from_env()
    config = config or CollectorSettings.from_env(settings)
    folder = os.environ.get("VIEWCOUNT_COLLECTOR_METRICS_DIR")
    collector = Collector(settings, config, Path(folder) if folder else None)

    async def events(request):
        status, body, headers = await collector.post_events(request.headers, request.query_params, request.stream())
        return JSONResponse(body, status_code=status, headers=headers)

    async def metrics(_request):
        queued = collector.kafka.queued() if collector.kafka else 0
        return PlainTextResponse(collector.metrics.text(queued), media_type="text/plain; version=0.0.4")

    async def health(_request):
        down = collector.kafka is None or collector.kafka.down_since is not None
        return JSONResponse({"kafka": "down" if down else "up"}, status_code=503 if down else 200)

    @asynccontextmanager
    async def lifespan(_app):
        collector.start()
        try:
            yield
        finally:
            await asyncio.to_thread(collector.close)

    app = Starlette(routes=[Route(PATH, events, methods=["POST"]), Route("/metrics", metrics),
                            Route("/healthz", health)], lifespan=lifespan)
    app.state.collector = collector
    return app


def serve(settings: Settings, config: CollectorSettings) -> None:
    """Run uvicorn with config.workers processes (each its own producer) until SIGINT/SIGTERM."""
    import tempfile

    import uvicorn

    load_write_keys(config)  # fail here, with the reason, rather than in every worker
    folder = Path(tempfile.mkdtemp(prefix="viewcount-collector-metrics-"))
    os.environ["VIEWCOUNT_COLLECTOR_METRICS_DIR"] = str(folder)
    # Workers are new processes: they read the same settings from the environment.
    for name in ("host", "port", "workers", "max_body_bytes", "max_events_per_batch", "max_event_bytes",
                 "ack_timeout_s", "max_queued_events", "retry_after_s", "linger_ms", "max_connections"):
        os.environ[f"VIEWCOUNT_COLLECTOR_{name.upper()}"] = str(getattr(config, name))
    log.warning("collector on http://%s:%d%s (%d workers) -> Kafka at %s, topics %s.*", config.host, config.port,
                PATH, config.workers, settings.kafka_bootstrap, settings.topics.prefix)
    try:
        uvicorn.run("pipelines.ingest.collector:create_app", factory=True, host=config.host, port=config.port,
                    workers=config.workers, loop="uvloop", http="httptools", access_log=False,
                    limit_concurrency=config.max_connections,
                    log_level="warning", timeout_graceful_shutdown=int(config.ack_timeout_s) + 5)
    finally:
        for path in folder.glob("*"):
            path.unlink(missing_ok=True)
        folder.rmdir()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, help="port (default 18080, or VIEWCOUNT_COLLECTOR_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (default 2)")
    parser.add_argument("--new-key", metavar="NAME", help="add a write key for client NAME to the keys file, "
                                                          "print it, and exit")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.new_key:
        key = new_write_key(settings, args.new_key)
        print(f"{args.new_key} {key}    (added to {default_keys_file(settings)})")
        return 0
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
                 if v is not None}
    config = CollectorSettings.from_env(settings, **overrides)
    try:
        serve(settings, config)
    except ValueError as exc:
        print(f"viewcount collect: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest.collector", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv), Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The VIEWCOUNT_* variables that make a new process see these settings (Kafka, topics, time rules)."""
    return {
        "VIEWCOUNT_STATE_DIR": str(settings.state_dir),
        "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
        "VIEWCOUNT_EVENT_MAX_FUTURE_S": str(settings.event_max_future_s),
        "VIEWCOUNT_EVENT_MAX_AGE_S": str(settings.event_max_age_s),
    }


class CollectorProcess:
    """`python -m pipelines.ingest.collector` as a child in a session of its own (tests, benchmarks)."""

    def __init__(self, settings: Settings, keys: dict[str, str], port: int | None = None, workers: int = 2,
                 log_path: Path | None = None, **knobs: object):
        import subprocess

        from pipelines.config import REPO_ROOT

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings),
               "VIEWCOUNT_COLLECTOR_KEYS": ",".join(f"{n}={k}" for n, k in keys.items())}
        env.update({f"VIEWCOUNT_COLLECTOR_{name.upper()}": str(value) for name, value in knobs.items()})
        self.log_path = log_path or Path(f"/tmp/viewcount-collector-{self.port}.log")
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.ingest.collector", "--port", str(self.port),
                 "--workers", str(workers)],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def wait_ready(self, timeout_s: float = 60.0) -> CollectorProcess:
        """Poll /healthz until it answers (Kafka reachable) or the process dies or time runs out."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the collector exited ({self.process.returncode}): {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)  # polling interval
        raise RuntimeError(f"the collector at {self.url} was not ready after {timeout_s:.0f} s: "
                           f"{self.log_path.read_text()}")

    def pids(self) -> list[int]:
        """The supervisor and its workers (the process group)."""
        pgid = self.process.pid
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                found.append(int(stat.parent.name))
        return found

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def kill(self) -> None:
        """kill -9 of every process of the collector at once: no flush, no goodbye."""
        import signal

        # The group is signalled only while its leader is not yet reaped, so its id cannot have
        # been reused by someone else's process group.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        import signal
        import subprocess

        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # the supervisor and its workers
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> CollectorProcess:
        return self.wait_ready()

    def __exit__(self, *_exc) -> None:
        self.stop()
