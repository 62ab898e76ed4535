"""`viewcount serve`: the read-only HTTP API and live page dashboards poll, cached for pollers.

Every answer comes from the subject rollups (or a post's minute rows) as the `dashboard`
ClickHouse user. Polling is the normal load: identical requests within the TTL share one
ClickHouse query (single-flight), and answers carry Cache-Control and an ETag. Bad input gets
a 4xx JSON error naming the parameter (an unknown parameter too: it never reaches the cache);
a ClickHouse outage, or ClickHouse refusing work (quota, concurrency, memory), a 503 with
Retry-After; a client over its rate (pipelines/serve/limits.py) a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request  # at module level: the endpoints' annotations are resolved by name

from pipelines.config import REPO_ROOT, Settings
from pipelines.serve.limits import RateLimit, TokenBuckets, overload

log = logging.getLogger("viewcount.serve")

WEB_DIR = REPO_ROOT / "web"
# The chart library, installed from npm by `make web` (package.json): served from here, never a CDN.
CHART_DIR = REPO_ROOT / "node_modules" / "chart.js" / "dist"
SWAGGER_DIR = REPO_ROOT / "node_modules" / "swagger-ui-dist"
DEFAULT_TTL_S = 2.0
RETRY_AFTER_S = 5
# A dashboard range longer than this is a mistake (or an expensive question): ask for less.
MAX_RANGE = timedelta(days=31)
MAX_TOP_POSTS = 100
# An expired answer younger than this many TTLs is sent while its successor is computed.
STALE_LIMIT_TTLS = 5


class ApiError(Exception):
    """A request the API cannot answer as asked: status, the parameter at fault, what to do."""

    def __init__(self, status: int, parameter: str, message: str):
        super().__init__(message)
        self.status, self.parameter, self.message = status, parameter, message


# --- single-flight TTL cache ------------------------------------------------------------------

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


# --- ClickHouse access ------------------------------------------------------------------------

class Database:
    """One dashboard connection per server thread (a clickhouse-driver client is not shared)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = threading.local()
        self.queries = 0  # ClickHouse queries sent (connection checks included)

    def client(self):
        from pipelines.store.clickhouse import connect_dashboard

        client = getattr(self._local, "client", None)
        if client is None:
            self.queries += 1  # the connection's check
            client = self._local.client = connect_dashboard(self.settings)
            execute = client.execute

            def counted(*args, **kwargs):
                self.queries += 1
                return execute(*args, **kwargs)

            client.execute = counted
        return client

    def forget(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # it is being thrown away
                client.disconnect()


def _outage_types() -> tuple[type[BaseException], ...]:
    from clickhouse_driver import errors as ch_errors

    from pipelines.store.clickhouse import ClickHouseUnavailable

    return (ClickHouseUnavailable, ch_errors.NetworkError, ch_errors.SocketTimeoutError, OSError, EOFError)


# --- request parameters -----------------------------------------------------------------------

def accepted_parameters(route) -> list[str]:
    """The query parameters an endpoint declares (their public names: `from`, not `start`)."""
    names, dependants = set(), [route.dependant]
    while dependants:
        dependant = dependants.pop()
        names.update(p.alias for p in dependant.query_params)
        dependants.extend(dependant.dependencies)
    return sorted(names)


def known_parameters_only(request: Request) -> None:
    """Refuse a query parameter the endpoint does not declare, or one given twice, before anything
    else: junk parameters would otherwise each make a cache key of their own and a ClickHouse query."""
    route = request.scope.get("route")
    if route is None or not request.url.path.startswith("/api/"):
        return
    accepted = accepted_parameters(route)
    names = [name for name, _ in request.query_params.multi_items()]
    for name in names:
        if name not in accepted:
            raise ApiError(400, name, f"unknown parameter {name!r}: {route.path} accepts "
                           f"{', '.join(accepted) if accepted else 'no parameters'}")
        if names.count(name) > 1:
            raise ApiError(400, name, f"{name} is given {names.count(name)} times: give it once")


@functools.cache
def _subjects() -> dict:
    from pipelines.rollups.subjects import load_subjects

    return load_subjects()


def _subject(subject_id: str):
    subjects = _subjects()
    if subject_id not in subjects:
        raise ApiError(404, "subject_id", f"no subject {subject_id!r}; known subjects: {', '.join(sorted(subjects))}")
    return subjects[subject_id]


def _zone(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(400, "tz", f"unknown time zone {name!r}: use an IANA name like America/New_York or UTC") from exc


def _asked(subject_id: str, start: str | None, end: str | None, tz: str | None, series: bool = False):
    """A request's subject, time zone and UTC range, checked (ApiError names what is wrong).

    A series asked without a range gets (None, None): recent_range() bounds it when it is computed."""
    subject = _subject(subject_id)
    zone = _zone(tz, subject.time_zone)
    if series and not start and not end:
        return subject, zone, None, None
    lo, hi = _range(start, end, zone)
    return subject, zone, lo, hi


def recent_range(client, subject, span: timedelta) -> tuple[datetime, datetime]:
    """The default range of a series: span up to the end of the subject's newest minute with views
    (an archived night shows its last hours, a live one the last hours up to now); span up to the
    current minute if it has none yet. Never all time: a poller's cost must not grow with history."""
    from pipelines.serve.query import query_text

    rows = client.execute(query_text("subject_freshness"))
    newest = [m for (subject_id, _at, _read_to, m, _now) in rows if subject_id == subject.id and m and m.year > 1970]
    if newest:
        end = newest[0] + timedelta(minutes=1)
    else:
        end = (rows[0][4] if rows else datetime.now(UTC).replace(tzinfo=None)).replace(second=0, microsecond=0)
    end = end.replace(tzinfo=UTC)
    return end - span, end


def _range(start: str | None, end: str | None, zone: ZoneInfo) -> tuple[datetime, datetime]:
    from pipelines.serve.query import ALL_TIME

    if not start and not end:
        return ALL_TIME
    if not (start and end):
        raise ApiError(400, "to" if start else "from", "give both from and to (local times like 2024-08-12T19:47), "
                       "or neither for all the data")
    bounds = []
    for name, text in (("from", start), ("to", end)):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ApiError(400, name, f"{name}={text!r} is not a time: write it like 2024-08-12T19:47") from exc
        bounds.append((moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(UTC))
    if bounds[1] <= bounds[0]:
        raise ApiError(400, "to", f"the range ends ({end}) before it starts ({start}): swap from and to")
    if bounds[1] - bounds[0] > MAX_RANGE:
        raise ApiError(400, "from", f"the range is longer than {MAX_RANGE.days} days: ask for a shorter one")
    return bounds[0], bounds[1]


def _local(moment: datetime | None, zone: ZoneInfo) -> str | None:
    if moment is None:
        return None
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return aware.astimezone(zone).isoformat()


# --- answers ----------------------------------------------------------------------------------

def subjects_answer() -> list[dict]:
    return [{"id": s.id, "name": s.name, "root_post_id": s.root_post_id, "space_id": s.space_id,
             "tags": list(s.tags), "time_zone": s.time_zone} for s in _subjects().values()]


def figures_answer(client, subject, start: datetime, end: datetime, zone: ZoneInfo) -> dict:
    from pipelines.serve import query

    try:
        f = query.subject_rollup_figures(client, subject, start, end)
    except query.QueryError as exc:
        raise ApiError(404, "from", str(exc)) from exc
    answer = {
        "subject_id": subject.id, "from": _local(start, zone) if start != query.ALL_TIME[0] else None,
        "to": _local(end, zone) if end != query.ALL_TIME[1] else None, "time_zone": str(zone),
        "subject_views": f.subject_views, "posts_about": f.posts_about,
        "views_of_posts_about": f.views_of_posts_about, "combined_views": f.combined_views,
        "unique_viewers": {"estimate": round(f.unique_viewers), "lower": round(f.unique_viewers_lower),
                           "upper": round(f.unique_viewers_upper)},
        "headline": query.headline(f),
    }
    if f.listeners is not None:
        answer["listeners"] = {
            "peak": f.listeners.peak_listeners, "peak_minute": _local(f.listeners.peak_minute, zone),
            "unique": {"estimate": round(f.listeners.unique_listeners),
                       "lower": round(f.listeners.unique_listeners_lower),
                       "upper": round(f.listeners.unique_listeners_upper)}}
    return answer


def series_answer(client, subject, start: datetime | None, end: datetime | None, grain: str, zone: ZoneInfo,
                  default_span: timedelta = timedelta(hours=24)) -> dict:
    from pipelines.serve import query

    if start is None or end is None:
        start, end = recent_range(client, subject, default_span)
    frame = query.subject_minute_rows(client, subject, start, end, grain=grain)
    rows = frame.to_dict("records")
    for row in rows:
        row["window_start"] = _local(row["window_start"].to_pydatetime(), zone)
        row["unique_viewers"] = round(row["unique_viewers"])
    return {"subject_id": subject.id, "grain": grain, "time_zone": str(zone), "from": _local(start, zone),
            "to": _local(end, zone), "rows": rows}


def listeners_answer(client, subject, start: datetime | None, end: datetime | None, zone: ZoneInfo,
                     default_span: timedelta = timedelta(hours=24)) -> dict:
    if not subject.space_id:
        raise ApiError(404, "subject_id", f"subject {subject.id} has no Space: no listeners")
    series = series_answer(client, subject, start, end, "minute", zone, default_span)
    curve = [{"window_start": r["window_start"], "listeners": r["listeners"]} for r in series["rows"]]
    now = curve[-1]["listeners"] if curve else 0
    peak = max(curve, key=lambda r: r["listeners"], default=None)
    return {"subject_id": subject.id, "space_id": subject.space_id, "time_zone": str(zone), "from": series["from"],
            "to": series["to"], "now": now, "peak": peak["listeners"] if peak else 0,
            "peak_minute": peak["window_start"] if peak else None, "minutes": curve}


def post_answer(client, post_id: int, start: datetime, end: datetime) -> dict:
    from pipelines.serve import query

    f = query.post_figures(client, post_id, start, end)
    if not f.minutes:
        raise ApiError(404, "post_id", f"no views of post {post_id} in the range")
    return {"post_id": post_id, "views": f.views, "impressions": f.impressions, "minutes": f.minutes,
            "unique_viewers": {"estimate": round(f.unique_viewers), "lower": round(f.unique_viewers_lower),
                               "upper": round(f.unique_viewers_upper)}}


def top_posts_answer(client, subject, start: datetime, end: datetime, limit: int) -> dict:
    from pipelines.serve import query

    frame = query.subject_top_posts(client, subject, start, end, limit)
    return {"subject_id": subject.id, "posts": frame.to_dict("records")}


def health_answer(client) -> dict:
    from pipelines.serve.query import query_text

    rows = client.execute(query_text("subject_freshness"))
    subjects = []
    for subject_id, refreshed_at, _read_to, newest_minute, server_now in rows:
        newest_end = newest_minute + timedelta(minutes=1) if newest_minute and newest_minute.year > 1970 else None
        subjects.append({
            "subject_id": subject_id,
            "data_until": newest_end.replace(tzinfo=UTC).isoformat() if newest_end else None,
            "behind_real_time_s": (server_now - newest_end).total_seconds() if newest_end else None,
            "refreshed_at": refreshed_at.replace(tzinfo=UTC).isoformat(),
            "refreshed_s_ago": (server_now - refreshed_at).total_seconds(),
        })
    return {"clickhouse": "ok", "subjects": subjects}


# --- the application --------------------------------------------------------------------------

def create_app(settings: Settings, ttl_s: float = DEFAULT_TTL_S):
    from fastapi import Depends, FastAPI, Query
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="viewcount dashboards API", version="1", docs_url=None, redoc_url=None,
                  description="Read-only figures for dashboards, from the subject rollups. Times are local to "
                  "`tz` (default: the subject's zone); ranges are [from, to). Answers are cached for "
                  f"{ttl_s:g} s. Unknown parameters are refused (400); each client address may send "
                  f"{settings.api_burst} requests at once and {settings.api_rate_per_s:g} a second (429 beyond).",
                  dependencies=[Depends(known_parameters_only)])
    database = Database(settings)
    default_span = timedelta(hours=settings.api_default_span_h)
    cache = SingleFlightCache(ttl_s)
    app.state.cache, app.state.database = cache, database
    outage = _outage_types()
    revalidations: set = set()

    def answer_headers(found: Answer) -> dict:
        return {"Cache-Control": f"public, max-age={max(1, int(ttl_s))}, "
                f"stale-while-revalidate={max(1, int(STALE_LIMIT_TTLS * ttl_s))}", "ETag": found.etag}

    app.add_middleware(FreshAnswers, cache=cache, headers=answer_headers)
    app.state.rate_limit = None
    if settings.api_rate_per_s > 0 and settings.api_burst > 0:
        # Added last, so it runs first: a client over its rate is refused before the cache.
        app.add_middleware(RateLimit, buckets=TokenBuckets(settings.api_rate_per_s, settings.api_burst))

    def refused(exc: BaseException):
        """A 503 for ClickHouse refusing work (quota, concurrency, memory, time), else None."""
        found = overload(exc)
        if found is None:
            return None
        what, retry_after = found
        log.warning("ClickHouse refused the dashboard's query: %s", str(exc).splitlines()[0][:300])
        return JSONResponse(status_code=503, headers={"Retry-After": str(retry_after)}, content={
            "error": f"{what}; try again in {retry_after} s", "parameter": None})

    async def answer(request: Request, compute: Callable[[], object]) -> Response:
        key = cache_key(request.url.path, request.query_params.multi_items())
        try:
            # A fresh answer is sent from the event loop. An expired one is still sent while one
            # worker thread computes its successor (stale-while-revalidate): pollers never queue
            # behind a computation. Only a first request, or one long after the last, waits.
            found = cache.fresh(key)
            if found is None:
                stale = cache.latest(key)
                if stale is not None and time.monotonic() - stale.made_at < STALE_LIMIT_TTLS * cache.ttl_s:
                    if not cache.in_flight(key):
                        revalidations.add(asyncio.ensure_future(run_in_threadpool(cache.get, key, compute)))
                        for task in [t for t in revalidations if t.done()]:
                            revalidations.discard(task)
                            if task.exception() is not None:
                                log.warning("refreshing %s failed: %s", key, task.exception())
                    found = stale
                else:
                    found = await run_in_threadpool(cache.get, key, compute)
        except outage as exc:
            database.forget()
            log.warning("ClickHouse unavailable: %s", exc)
            return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}, content={
                "error": "ClickHouse is unavailable; try again shortly", "parameter": None})
        except Exception as exc:
            response = refused(exc)
            if response is None:
                raise
            return response
        headers = answer_headers(found)
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type="application/json", headers=headers)

    @app.exception_handler(ApiError)
    def api_error(_request: Request, exc: ApiError):
        return JSONResponse(status_code=exc.status, content={"error": exc.message, "parameter": exc.parameter})

    @app.exception_handler(RequestValidationError)
    def bad_parameter(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("query", "path")]
        name = where[-1] if where else None
        return JSONResponse(status_code=400, content={
            "error": f"{name}: {first.get('msg', 'invalid value')}", "parameter": name})

    @app.exception_handler(Exception)
    def unexpected(_request: Request, exc: Exception):
        if isinstance(exc, outage):
            return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}, content={
                "error": "ClickHouse is unavailable; try again shortly", "parameter": None})
        response = refused(exc)
        if response is not None:
            return response
        log.error("unexpected error", exc_info=exc)
        return JSONResponse(status_code=500, content={"error": "internal error (logged by the server)",
                                                      "parameter": None})

    subject_path = PathParam(description="an id from config/subjects.toml (GET /api/subjects)")
    from_q = Query(None, alias="from", description="local start, e.g. 2024-08-12T19:47 (omit both for all data; "
                   f"series and listeners: the {settings.api_default_span_h} h up to the subject's newest minute)")
    to_q = Query(None, alias="to", description="local end (exclusive)")
    tz_q = Query(None, description="IANA time zone of from/to and of the answer (default: the subject's)")

    @app.get("/api/subjects", summary="tracked subjects")
    async def subjects(request: Request):
        return await answer(request, subjects_answer)

    @app.get("/api/subjects/{subject_id}/figures", summary="a subject's headline figures for a range, with bounds")
    async def figures(request: Request, subject_id: str = subject_path, start: str | None = from_q,
                end: str | None = to_q, tz: str | None = tz_q):
        subject, zone, lo, hi = _asked(subject_id, start, end, tz)
        return await answer(request, lambda: figures_answer(database.client(), subject, lo, hi, zone))

    @app.get("/api/subjects/{subject_id}/series", summary="a subject's minute or hour series")
    async def series(request: Request, subject_id: str = subject_path, start: str | None = from_q,
               end: str | None = to_q, tz: str | None = tz_q,
               grain: str = Query("minute", pattern="^(minute|hour)$", description="minute or hour")):
        subject, zone, lo, hi = _asked(subject_id, start, end, tz, series=True)
        return await answer(request, lambda: series_answer(database.client(), subject, lo, hi, grain, zone,
                                                            default_span))

    @app.get("/api/subjects/{subject_id}/listeners", summary="concurrent listeners of the subject's Space per minute")
    async def listeners(request: Request, subject_id: str = subject_path, start: str | None = from_q,
                  end: str | None = to_q, tz: str | None = tz_q):
        subject, zone, lo, hi = _asked(subject_id, start, end, tz, series=True)
        return await answer(request, lambda: listeners_answer(database.client(), subject, lo, hi, zone,
                                                              default_span))

    @app.get("/api/subjects/{subject_id}/top-posts", summary="the subject's most viewed posts")
    async def top_posts(request: Request, subject_id: str = subject_path, start: str | None = from_q,
                  end: str | None = to_q, tz: str | None = tz_q,
                  limit: int = Query(10, ge=1, le=MAX_TOP_POSTS)):
        subject, zone, lo, hi = _asked(subject_id, start, end, tz)
        return await answer(request, lambda: top_posts_answer(database.client(), subject, lo, hi, limit))

    @app.get("/api/posts/{post_id}", summary="a post's views, impressions and unique viewers")
    async def post(request: Request, post_id: int = PathParam(ge=1), start: str | None = from_q,
             end: str | None = to_q, tz: str | None = Query("UTC")):
        zone = _zone(tz, "UTC")
        lo, hi = _range(start, end, zone)
        return await answer(request, lambda: post_answer(database.client(), post_id, lo, hi))

    @app.get("/api/health", summary="ClickHouse reachable; how far behind real time each subject's rollups are")
    async def health(request: Request):
        return await answer(request, lambda: health_answer(database.client()))

    if (WEB_DIR / "index.html").is_file():
        @app.get("/", include_in_schema=False)
        def page():
            return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    if SWAGGER_DIR.is_dir():  # /docs from npm's swagger-ui-dist, not FastAPI's default CDN
        from fastapi.openapi.docs import get_swagger_ui_html

        app.mount("/vendor/swagger-ui", StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")

        @app.get("/docs", include_in_schema=False)
        def docs():
            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title,
                                       swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
                                       swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
                                       swagger_favicon_url="/vendor/swagger-ui/favicon-32x32.png")
    if CHART_DIR.is_dir():
        app.mount("/vendor/chart.js", StaticFiles(directory=CHART_DIR), name="chart.js")
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, ttl_s: float = DEFAULT_TTL_S) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, ttl_s), host=host, port=port, log_level="warning")


def page_path() -> Path:
    return WEB_DIR / "index.html"
