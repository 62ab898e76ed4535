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
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from fastapi import Request  # at module level: the endpoints' annotations are resolved by name

from pipelines.config import REPO_ROOT, Settings
from pipelines.serve.answers import (
    ApiError,
    asked,
    asked_range,
    figures_answer,
    health_answer,
    known_parameters_only,
    listeners_answer,
    post_answer,
    series_answer,
    subjects_answer,
    top_posts_answer,
    zone_named,
)
from pipelines.serve.cache import Answer, FreshAnswers, SingleFlightCache, cache_key
from pipelines.serve.limits import RateLimit, TokenBuckets, overload

log = logging.getLogger("viewcount.serve")

WEB_DIR = REPO_ROOT / "web"
# The chart library, installed from npm by `make web` (package.json): served from here, never a CDN.
CHART_DIR = REPO_ROOT / "node_modules" / "chart.js" / "dist"
SWAGGER_DIR = REPO_ROOT / "node_modules" / "swagger-ui-dist"
DEFAULT_TTL_S = 2.0
RETRY_AFTER_S = 5
MAX_TOP_POSTS = 100
# An expired answer younger than this many TTLs is sent while its successor is computed.
STALE_LIMIT_TTLS = 5


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
        subject, zone, lo, hi = asked(subject_id, start, end, tz)
        return await answer(request, lambda: figures_answer(database.client(), subject, lo, hi, zone))

    @app.get("/api/subjects/{subject_id}/series", summary="a subject's minute or hour series")
    async def series(request: Request, subject_id: str = subject_path, start: str | None = from_q,
               end: str | None = to_q, tz: str | None = tz_q,
               grain: str = Query("minute", pattern="^(minute|hour)$", description="minute or hour")):
        subject, zone, lo, hi = asked(subject_id, start, end, tz, series=True)
        return await answer(request, lambda: series_answer(database.client(), subject, lo, hi, grain, zone,
                                                            default_span))

    @app.get("/api/subjects/{subject_id}/listeners", summary="concurrent listeners of the subject's Space per minute")
    async def listeners(request: Request, subject_id: str = subject_path, start: str | None = from_q,
                  end: str | None = to_q, tz: str | None = tz_q):
        subject, zone, lo, hi = asked(subject_id, start, end, tz, series=True)
        return await answer(request, lambda: listeners_answer(database.client(), subject, lo, hi, zone,
                                                              default_span))

    @app.get("/api/subjects/{subject_id}/top-posts", summary="the subject's most viewed posts")
    async def top_posts(request: Request, subject_id: str = subject_path, start: str | None = from_q,
                  end: str | None = to_q, tz: str | None = tz_q,
                  limit: int = Query(10, ge=1, le=MAX_TOP_POSTS)):
        subject, zone, lo, hi = asked(subject_id, start, end, tz)
        return await answer(request, lambda: top_posts_answer(database.client(), subject, lo, hi, limit))

    @app.get("/api/posts/{post_id}", summary="a post's views, impressions and unique viewers")
    async def post(request: Request, post_id: int = PathParam(ge=1), start: str | None = from_q,
             end: str | None = to_q, tz: str | None = Query("UTC")):
        zone = zone_named(tz, "UTC")
        lo, hi = asked_range(start, end, zone)
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
