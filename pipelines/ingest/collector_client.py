"""Sending events to the collector over HTTP: batches, the envelope, retries; the night via HTTP."""

from __future__ import annotations

import gzip
import http.client
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from pipelines.ingest import schemas

PATH = "/v1/events"


class CollectorError(RuntimeError):
    """The collector refused a batch for a reason a retry does not fix (4xx but 429), or never took it."""


@dataclass
class Response:
    status: int
    body: dict
    headers: dict[str, str]


def envelope(event_type: str, event: dict, version: int = schemas.CURRENT_VERSION) -> dict:
    """The event as a client sends it: its type and schema version first, then its fields."""
    return {"event_type": event_type, "schema_version": version, **event}


class CollectorClient:
    """One keep-alive connection to a collector (http://host:port); not thread-safe: one per thread."""

    def __init__(self, url: str, key: str, timeout_s: float = 30.0, compress: bool = False):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"collector URL {url!r} must look like http://127.0.0.1:18080")
        self.host, self.port = parts.hostname, parts.port or 80
        self.key = key
        self.timeout_s = timeout_s
        self.compress = compress
        self.connection: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def post(self, body: bytes, content_type: str = "application/json", gzipped: bool = False,
             key: str | None = None, query: str = "", extra_headers: dict[str, str] | None = None) -> Response:
        """One POST of a ready body; the connection is re-opened once if the server had closed it."""
        headers = {"Content-Type": content_type, **(extra_headers or {})}
        used_key = self.key if key is None else key
        if used_key:
            headers["Authorization"] = f"Bearer {used_key}"
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request("POST", PATH + query, body=body, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                break
            except (ConnectionError, http.client.HTTPException, TimeoutError):
                self.close()
                if attempt == 2:
                    raise
        try:
            parsed = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            parsed = {"error": data.decode("utf-8", "replace")}
        return Response(reply.status, parsed, {k.lower(): v for k, v in reply.getheaders()})

    def send(self, events: list[dict], retry_for_s: float = 120.0) -> Response:
        """Send events (already in their envelope) as one batch; retries a 503, a 429 (over the key's rate
        limit) or a lost connection after the collector's Retry-After (the same events again: the job
        counts an event_id once)."""
        body = orjson.dumps(events)
        if self.compress:
            body = gzip.compress(body, compresslevel=1)
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                response = self.post(body, gzipped=self.compress)
            except (OSError, http.client.HTTPException) as exc:
                if time.monotonic() > deadline:
                    raise CollectorError(f"collector at {self.host}:{self.port} unreachable ({exc}): is "
                                         "`viewcount collect` running?") from exc
                time.sleep(1.0)  # back-off before reconnecting, not synchronisation
                continue
            if response.status in (429, 503) and time.monotonic() < deadline:
                time.sleep(float(response.headers.get("retry-after", "1")))  # back-off, as the server asks
                continue
            if response.status != 200:
                raise CollectorError(f"collector at {self.host}:{self.port} answered {response.status}: "
                                     f"{response.body.get('error', response.body)}")
            return response


def send_events(url: str, key: str, events: Iterable[tuple[str, dict]], batch_size: int = 500,
                rate: float | None = None, compress: bool = False,
                progress: Callable[[int], None] | None = None) -> tuple[int, int, list[str]]:
    """Send (event_type, event) pairs in order, one batch at a time (so a source partition keeps
    the order the client sent); returns (accepted, rejected, the first reject reasons)."""
    client = CollectorClient(url, key, compress=compress)
    accepted = rejected = sent = 0
    first_reasons: list[str] = []
    started = time.monotonic()
    batch: list[dict] = []

    def flush() -> None:
        nonlocal accepted, rejected
        response = client.send(batch)
        accepted += response.body["accepted"]
        rejected += response.body["rejected"]
        if len(first_reasons) < 3:
            first_reasons.extend(r["reason"] for r in response.body["reasons"][:3 - len(first_reasons)])
        batch.clear()

    try:
        for event_type, event in events:
            batch.append(envelope(event_type, event))
            sent += 1
            if len(batch) >= batch_size:
                flush()
                if progress:
                    progress(sent)
                if rate:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing to the offered load, not synchronisation
        if batch:
            flush()
            if progress:
                progress(sent)
    finally:
        client.close()
    return accepted, rejected, first_reasons


def send_night(url: str, key: str, events: Iterable[tuple[str, dict]], total: int,
               progress: Callable[[int, int], None] | None = None, batch_size: int = 500,
               rate: float | None = None) -> int:
    """The generator's night through the collector; every event must be accepted."""
    accepted, rejected, reasons = send_events(
        url, key, events, batch_size=batch_size, rate=rate,
        progress=(lambda sent: progress(sent, total)) if progress else None)
    if rejected:
        raise CollectorError(
            f"the collector at {url} rejected {rejected:,} of {total:,} events (first reasons: {reasons}); "
            "a night of 2024 arrives now: start the collector (and the job) with VIEWCOUNT_EVENT_MAX_AGE_S "
            "large enough, e.g. 315360000 (ten years)")
    return accepted
