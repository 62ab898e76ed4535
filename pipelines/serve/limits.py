"""What keeps the dashboards API answering under abuse: a token bucket per client address, and
ClickHouse's own refusals (quota, concurrency, memory) told apart from bugs.

The API's other guards live with its parameters (pipelines/serve/api.py): unknown query
parameters are refused before they reach the cache or ClickHouse, and series have a bounded range.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

# ClickHouse error codes that mean "the server is refusing work for now", not "the request is
# wrong": the answer is 503 with Retry-After, never a 500.
QUOTA_EXPIRED = 201
TOO_MANY_SIMULTANEOUS_QUERIES = 202
MEMORY_LIMIT_EXCEEDED = 241
TIMEOUT_EXCEEDED = 159  # max_execution_time: a busy server, or a range too expensive right now
OVERLOAD_CODES = {
    QUOTA_EXPIRED: "the dashboard user's ClickHouse quota is used up",
    TOO_MANY_SIMULTANEOUS_QUERIES: "ClickHouse is running too many queries at once",
    MEMORY_LIMIT_EXCEEDED: "ClickHouse ran out of its memory allowance for this query",
    TIMEOUT_EXCEEDED: "ClickHouse did not finish the query within its time limit",
}
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 3600
# "... Interval will end at 2024-08-12 19:48:00. ..." (18.16; the server's time zone, UTC on the stack).
_QUOTA_END = re.compile(r"Interval will end at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def overload(exc: BaseException, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> tuple[str, int] | None:
    """(what the client is told, Retry-After seconds) if exc is ClickHouse refusing for load, else None."""
    code = getattr(exc, "code", None)
    if code not in OVERLOAD_CODES or not hasattr(exc, "message"):  # a clickhouse_driver ServerException
        return None
    retry_after = DEFAULT_RETRY_AFTER_S
    if code == QUOTA_EXPIRED:
        found = _QUOTA_END.search(str(exc))
        if found:
            end = datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)
            retry_after = min(MAX_RETRY_AFTER_S, max(1, math.ceil((end - now()).total_seconds())))
    return OVERLOAD_CODES[code], retry_after


class TokenBuckets:
    """A token bucket per key (client address): burst tokens at most, rate_per_s added a second.

    Memory is bounded: a bucket that has refilled completely is the same as no bucket, so such
    buckets are forgotten whenever the table grows past max_clients.
    """

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1, not {rate_per_s}, {burst}")
        self.rate_per_s, self.burst, self.max_clients, self.clock = rate_per_s, burst, max_clients, clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take a token for key: 0.0 if there was one, else the seconds until there will be."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self.max_clients:
                    self._forget_full(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate_per_s
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items() if now - at < refill_s}

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimit:
    """ASGI middleware: every /api/ request spends a token of its client's bucket (cached answers
    too: they cost this 2-core box a little, and a flood of them is still a flood); an empty bucket
    is a 429 JSON error with Retry-After. The client is the connection's address: behind a proxy,
    run uvicorn with --forwarded-allow-ips so that it is the proxy's X-Forwarded-For."""

    def __init__(self, app, buckets: TokenBuckets):
        self.app, self.buckets = app, buckets
        self.refused = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            client = (scope.get("client") or ("unknown", 0))[0]
            wait_s = self.buckets.take(client)
            if wait_s > 0:
                self.refused += 1
                body = json.dumps({
                    "error": f"too many requests from {client}: at most {self.buckets.burst} at once and "
                             f"{self.buckets.rate_per_s:g} a second; wait and try again", "parameter": None}).encode()
                await send({"type": "http.response.start", "status": 429, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, math.ceil(wait_s))).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
