"""The dashboards API's cache: identical requests within the TTL share one computation
(single-flight), and a fresh answer is sent before routing (FreshAnswers, the pollers' fast path)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass
class Answer:
    body: bytes
    etag: str
    made_at: float


class SingleFlightCache:
    """Answers by key for ttl_s seconds; concurrent misses of one key wait for one computation.

    A failed computation is not cached: every waiter gets the error, the next request retries.
    """

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._answers: dict[str, Answer] = {}
        self._in_flight: dict[str, threading.Event] = {}
        self._errors: dict[str, BaseException] = {}
        self.computations = 0

    def latest(self, key: str) -> Answer | None:
        """The last answer of key, however old (None if there never was one)."""
        return self._answers.get(key)

    def in_flight(self, key: str) -> bool:
        return key in self._in_flight

    def fresh(self, key: str) -> Answer | None:
        """The cached answer if still fresh, without waiting (the event loop's fast path)."""
        answer = self._answers.get(key)
        if answer is not None and time.monotonic() - answer.made_at < self.ttl_s:
            return answer
        return None

    def get(self, key: str, compute: Callable[[], object]) -> Answer:
        while True:
            with self._lock:
                answer = self._answers.get(key)
                if answer is not None and time.monotonic() - answer.made_at < self.ttl_s:
                    return answer
                waiting = self._in_flight.get(key)
                if waiting is None:
                    done = self._in_flight[key] = threading.Event()
                    break
            waiting.wait()
            with self._lock:
                error = self._errors.get(key)
                answer = self._answers.get(key)
            if error is not None and (answer is None or time.monotonic() - answer.made_at >= self.ttl_s):
                raise error
        try:
            self.computations += 1
            body = json.dumps(compute(), default=_json_default, separators=(",", ":")).encode()
            answer = Answer(body, '"' + hashlib.sha1(body).hexdigest()[:20] + '"', time.monotonic())
            with self._lock:
                self._answers[key] = answer
                self._errors.pop(key, None)
                if len(self._answers) > 10_000:  # forget expired answers now and then
                    now = time.monotonic()
                    self._answers = {k: a for k, a in self._answers.items() if now - a.made_at < self.ttl_s}
            return answer
        except BaseException as exc:
            with self._lock:
                self._errors[key] = exc
            raise
        finally:
            with self._lock:
                self._in_flight.pop(key, None)
            done.set()


def cache_key(path: str, query_pairs) -> str:
    """One key per distinct request: the path and its query parameters, sorted."""
    return path + "?" + "&".join(sorted(f"{k}={v}" for k, v in query_pairs))


class FreshAnswers:
    """ASGI middleware: a GET under /api/ whose answer is fresh in the cache is sent from here,
    before routing and parameter validation (most of a poller's cost); the rest go on."""

    def __init__(self, app, cache: SingleFlightCache, headers: Callable[[Answer], dict]):
        self.app, self.cache, self.headers = app, cache, headers

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith("/api/"):
            from urllib.parse import parse_qsl

            query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            found = self.cache.fresh(cache_key(scope["path"], query))
            if found is not None:
                headers = self.headers(found)
                match = any(k == b"if-none-match" and v.decode("latin-1") == found.etag for k, v in scope["headers"])
                raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                if match:
                    await send({"type": "http.response.start", "status": 304, "headers": raw})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(found.body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": raw})
                    await send({"type": "http.response.body", "body": found.body})
                return
        await self.app(scope, receive, send)


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")
