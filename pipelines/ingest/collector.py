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
import json
import logging
import math
import os
import secrets
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pipelines.config import EVENT_TYPES, Settings
from pipelines.ingest import schemas, validation, write_keys
from pipelines.ingest.collector_kafka import Batch, KafkaSide
from pipelines.ingest.collector_metrics import Metrics
from pipelines.ingest.collector_settings import CollectorSettings
from pipelines.ingest.rate_limit import KeyRateLimits
from pipelines.ingest.write_keys import KeyRefused, KeyStore

log = logging.getLogger("viewcount.collector")

PATH = "/v1/events"
ENVELOPE_TYPE, ENVELOPE_VERSION = "event_type", "schema_version"
KNOWN_VERSIONS = (schemas.CURRENT_VERSION,)
BODY_TYPES = {"application/json", "application/x-ndjson", "application/jsonlines", "application/x-jsonlines",
              "text/plain", ""}
# Reasons the collector adds to the job's (the envelope): fixed text, so a metric label stays bounded.
NO_EVENT_TYPE = f"event_type must be one of {', '.join(EVENT_TYPES)}"
UNKNOWN_VERSION = "schema_version is not a known version of its event_type"
FIRST_REASONS = 10  # rejects described one by one in a response


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
        self.keys = KeyStore.from_config(config)
        self.limits = KeyRateLimits(config.key_rate_events_per_s, config.key_burst_events)
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
        try:
            return self.keys.name_of(key)
        except KeyRefused as refused:
            raise Refusal(401, str(refused), {"WWW-Authenticate": "Bearer"}) from None

    def admit(self, key_name: str, events: int) -> None:
        """Take the batch's events from its client's rate limit, or refuse it with when to retry."""
        wait_s = self.limits.take(key_name, events)
        if wait_s > 0:
            self.metrics.add("viewcount_collector_rate_limited_requests_total", key=key_name)
            self.metrics.add("viewcount_collector_rate_limited_events_total", events, key=key_name)
            config = self.config
            retry_after = max(1, math.ceil(wait_s))
            raise Refusal(429, f"write key {key_name!r} is over its rate limit of {config.key_rate_events_per_s:g} "
                               f"events/s with bursts of {config.key_burst_events} (key_rate_events_per_s, "
                               f"key_burst_events, per worker): retry after {retry_after} s",
                          {"Retry-After": str(retry_after)})

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
            self.admit(key_name, len(items))
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

    KeyStore.from_config(config)  # fail here, with the reason, rather than in every worker
    folder = Path(tempfile.mkdtemp(prefix="viewcount-collector-metrics-"))
    os.environ["VIEWCOUNT_COLLECTOR_METRICS_DIR"] = str(folder)
    # Workers are new processes: they read the same settings from the environment.
    for name in ("host", "port", "workers", "max_body_bytes", "max_events_per_batch", "max_event_bytes",
                 "ack_timeout_s", "max_queued_events", "retry_after_s", "linger_ms", "max_connections",
                 "keys_file", "key_rate_events_per_s", "key_burst_events"):
        if getattr(config, name) is not None:
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
    write_keys.add_key_arguments(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
                 if v is not None}
    try:
        config = CollectorSettings.from_env(settings, **overrides)
        if write_keys.key_command(args, config):
            return 0
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
