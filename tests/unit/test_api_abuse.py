"""The dashboards API under abuse, on a fake ClickHouse: junk parameters are refused before the
cache and the database, ClickHouse refusing work is a 503 (a bug stays a 500), a client over its
rate gets 429, and series never default to all time. (The same on the real server:
tests/security/test_dashboards_abuse.py.)"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_driver.errors import ServerException

from pipelines.config import Settings
from pipelines.serve import api
from pipelines.serve.limits import TokenBuckets, overload

SUBJECT = "space-2024-08-12"
NEWEST_MINUTE = datetime(2024, 8, 13, 2, 46)  # naive UTC, as clickhouse-driver returns DateTime
SERVER_NOW = datetime(2026, 1, 2, 3, 4, 5)


class FakeClickHouse:
    """Stands in for the dashboard's connection: answers the freshness and series queries, counts
    every query, and raises `error` instead when one is set."""

    def __init__(self, error: BaseException | None = None, newest_minute: datetime | None = NEWEST_MINUTE):
        self.error, self.newest_minute = error, newest_minute
        self.queries: list[tuple[str, dict | None]] = []

    def execute(self, text, params=None, settings=None):
        self.queries.append((text, params))
        if self.error is not None:
            raise self.error
        if "subject_refresh_state" in text:  # subject_freshness.sql
            return [(SUBJECT, SERVER_NOW, SERVER_NOW, self.newest_minute or datetime(1970, 1, 1), SERVER_NOW)]
        return []  # subject_series.sql: no rows

    def disconnect(self):
        pass


@pytest.fixture()
def fake(monkeypatch):
    database = FakeClickHouse()
    monkeypatch.setattr("pipelines.store.clickhouse.connect_dashboard", lambda settings, check=True: database)
    return database


def make_app(rate_per_s: float = 0, burst: int = 0):
    return api.create_app(replace(Settings(), api_rate_per_s=rate_per_s, api_burst=burst), ttl_s=60)


def get(app, path: str, client: str = "127.0.0.1") -> tuple[int, dict, dict | None]:
    """One GET through the ASGI app, as uvicorn would send it (no HTTP client library needed)."""
    target, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": target, "raw_path": target.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"test")], "client": (client, 50000), "server": ("127.0.0.1", 8000)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception:  # noqa: BLE001 - Starlette re-raises a 500's error after sending the answer, as to uvicorn
        if not sent:
            raise
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body) if body else None


# --- unknown parameters -------------------------------------------------------------------------

def test_an_unknown_parameter_is_refused_naming_it_and_the_accepted_ones(fake):
    status, _, body = get(make_app(), f"/api/subjects/{SUBJECT}/figures?x=1")
    assert (status, body["parameter"]) == (400, "x")
    assert "unknown parameter 'x'" in body["error"] and "accepts from, to, tz" in body["error"]
    status, _, body = get(make_app(), "/api/health?verbose=1")
    assert (status, body["parameter"]) == (400, "verbose") and "accepts no parameters" in body["error"]


def test_a_parameter_given_twice_is_refused(fake):
    status, _, body = get(make_app(), f"/api/subjects/{SUBJECT}/series?grain=minute&grain=hour")
    assert (status, body["parameter"]) == (400, "grain") and "2 times" in body["error"]


def test_junk_parameters_never_reach_the_cache_or_clickhouse(fake):
    app = make_app()
    statuses = {get(app, f"/api/subjects/{SUBJECT}/figures?x={i}")[0] for i in range(700)}
    assert statuses == {400}
    assert fake.queries == [] and app.state.database.queries == 0
    assert app.state.cache.computations == 0 and app.state.cache._answers == {}


def test_every_declared_parameter_is_still_accepted(fake):
    app = make_app()
    status, _, body = get(app, f"/api/subjects/{SUBJECT}/series?grain=hour&from=2024-08-12T19:47"
                               "&to=2024-08-12T22:47&tz=UTC")
    assert status == 200, body
    status, _, body = get(app, f"/api/subjects/{SUBJECT}/top-posts?limit=3&from=2024-08-12T19:47&to=2024-08-12T22:47")
    assert status == 200, body


# --- ClickHouse refusing work -----------------------------------------------------------------------

QUOTA_MESSAGE = ("DB::Exception: Quota for user 'dashboard' for 1 minute has been exceeded. Queries: 601, max: 600. "
                 "Interval will end at {end}. Name of quota template: 'dashboard'.")


@pytest.mark.parametrize("code", [201, 202, 241, 159], ids=["quota", "too-many-queries", "memory", "timeout"])
def test_clickhouse_refusing_work_is_a_503_with_retry_after(fake, code):
    end = (datetime.now(UTC) + timedelta(seconds=42)).strftime("%Y-%m-%d %H:%M:%S")
    fake.error = ServerException(QUOTA_MESSAGE.format(end=end) if code == 201 else "refused", code=code)
    for path in (f"/api/subjects/{SUBJECT}/series", f"/api/subjects/{SUBJECT}/listeners", "/api/health"):
        status, headers, body = get(make_app(), path)
        assert status == 503, body
        assert int(headers["retry-after"]) >= 1 and "try again" in body["error"]
    if code == 201:
        assert 35 <= int(headers["retry-after"]) <= 43  # until the quota's interval ends


def test_any_other_clickhouse_error_is_still_a_500(fake):
    fake.error = ServerException("Missing columns: 'nope'", code=47)  # a bug of ours, not load
    status, headers, body = get(make_app(), "/api/health")
    assert status == 500 and "retry-after" not in headers and "internal error" in body["error"]


def test_the_quota_wait_is_read_from_the_servers_message():
    now = datetime(2024, 8, 12, 19, 47, 30, tzinfo=UTC)
    error = ServerException(QUOTA_MESSAGE.format(end="2024-08-12 19:48:00"), code=201)
    assert overload(error, now=lambda: now)[1] == 30
    assert overload(ServerException("no end given", code=201), now=lambda: now)[1] == 5
    assert overload(ServerException("x", code=47)) is None and overload(OSError("down")) is None


# --- the per-client rate limit ----------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_bucket_gives_its_burst_then_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0


def test_idle_clients_are_forgotten_when_the_table_is_full():
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=10, burst=5, max_clients=100, clock=clock)
    for i in range(100):
        buckets.take(f"10.0.0.{i}")
    clock.now += 1.0  # every bucket has refilled: the same as no bucket
    buckets.take("10.0.1.1")
    assert len(buckets) == 1


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_do_not(fake):
    app = make_app(rate_per_s=0.5, burst=3)
    answers = [get(app, "/api/subjects") for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    status, headers, body = answers[-1]
    assert int(headers["retry-after"]) == 2 and "too many requests from 127.0.0.1" in body["error"]
    assert get(app, "/api/subjects", client="10.1.2.3")[0] == 200
    assert get(app, "/openapi.json")[0] == 200  # only /api/ is counted


def test_the_rate_limit_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VIEWCOUNT_API_RATE_PER_S", "2.5")
    monkeypatch.setenv("VIEWCOUNT_API_BURST", "7")
    monkeypatch.setenv("VIEWCOUNT_API_DEFAULT_SPAN_H", "6")
    settings = Settings.from_env()
    assert (settings.api_rate_per_s, settings.api_burst, settings.api_default_span_h) == (2.5, 7, 6)


# --- bounded series ---------------------------------------------------------------------------------

def _series_range(fake) -> tuple[datetime, datetime]:
    (params,) = [p for text, p in fake.queries if p and "grain" in p]
    return params["from"], params["to"]


@pytest.mark.parametrize("endpoint", ["series", "listeners"])
def test_a_series_without_a_range_covers_the_last_day_up_to_the_newest_minute(fake, endpoint):
    status, _, body = get(make_app(), f"/api/subjects/{SUBJECT}/{endpoint}?tz=UTC")
    assert status == 200, body
    end = NEWEST_MINUTE + timedelta(minutes=1)
    assert _series_range(fake) == (end - timedelta(hours=24), end)
    assert (body["from"], body["to"]) == ("2024-08-12T02:47:00+00:00", "2024-08-13T02:47:00+00:00")


def test_a_subject_with_no_data_yet_gets_the_last_day_up_to_now(fake):
    fake.newest_minute = None
    status, _, body = get(make_app(), f"/api/subjects/{SUBJECT}/series?tz=UTC")
    assert status == 200, body
    end = SERVER_NOW.replace(second=0)
    assert _series_range(fake) == (end - timedelta(hours=24), end)


def test_the_default_span_is_a_setting(fake):
    app = api.create_app(replace(Settings(), api_rate_per_s=0, api_default_span_h=3), ttl_s=60)
    assert get(app, f"/api/subjects/{SUBJECT}/series")[0] == 200
    lo, hi = _series_range(fake)
    assert hi - lo == timedelta(hours=3)
