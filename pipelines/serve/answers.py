"""The dashboards API's questions and answers: each request's parameters checked (an ApiError
names the parameter at fault and what to do), and each endpoint's answer computed from the
subject rollups (pipelines.serve.figures_from_rollups)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request  # at module level: the endpoints' annotations are resolved by name

# A dashboard range longer than this is a mistake (or an expensive question): ask for less.
MAX_RANGE = timedelta(days=31)


class ApiError(Exception):
    """A request the API cannot answer as asked: status, the parameter at fault, what to do."""

    def __init__(self, status: int, parameter: str, message: str):
        super().__init__(message)
        self.status, self.parameter, self.message = status, parameter, message


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


def zone_named(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(400, "tz", f"unknown time zone {name!r}: use an IANA name like America/New_York or UTC") from exc


def asked(subject_id: str, start: str | None, end: str | None, tz: str | None, series: bool = False):
    """A request's subject, time zone and UTC range, checked (ApiError names what is wrong).

    A series asked without a range gets (None, None): recent_range() bounds it when it is computed."""
    subject = _subject(subject_id)
    zone = zone_named(tz, subject.time_zone)
    if series and not start and not end:
        return subject, zone, None, None
    lo, hi = asked_range(start, end, zone)
    return subject, zone, lo, hi


def recent_range(client, subject, span: timedelta) -> tuple[datetime, datetime]:
    """The default range of a series: span up to the end of the subject's newest minute with views
    (an archived night shows its last hours, a live one the last hours up to now); span up to the
    current minute if it has none yet. Never all time: a poller's cost must not grow with history."""
    from pipelines.store.queries import query_text

    rows = client.execute(query_text("subject_freshness"))
    newest = [m for (subject_id, _at, _read_to, m, _now) in rows if subject_id == subject.id and m and m.year > 1970]
    if newest:
        end = newest[0] + timedelta(minutes=1)
    else:
        end = (rows[0][4] if rows else datetime.now(UTC).replace(tzinfo=None)).replace(second=0, microsecond=0)
    end = end.replace(tzinfo=UTC)
    return end - span, end


def asked_range(start: str | None, end: str | None, zone: ZoneInfo) -> tuple[datetime, datetime]:
    from pipelines.serve.query import ALL_TIME, RangeError, local_range

    if not start and not end:
        return ALL_TIME
    if not (start and end):
        raise ApiError(400, "to" if start else "from", "give both from and to (local times like 2024-08-12T19:47), "
                       "or neither for all the data")
    try:
        lo, hi = local_range(start, end, zone)
    except RangeError as exc:
        raise ApiError(400, exc.bound, str(exc)) from exc
    if hi - lo > MAX_RANGE:
        raise ApiError(400, "from", f"the range is longer than {MAX_RANGE.days} days: ask for a shorter one")
    return lo, hi


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
    from pipelines.serve.figures_from_rollups import subject_rollup_figures

    try:
        f = subject_rollup_figures(client, subject, start, end)
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
    from pipelines.serve.figures_from_rollups import subject_minute_rows

    if start is None or end is None:
        start, end = recent_range(client, subject, default_span)
    frame = subject_minute_rows(client, subject, start, end, grain=grain)
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
    return {"post_id": post_id, **f.counts, "minutes": f.minutes,
            "unique_viewers": {"estimate": round(f.unique_viewers), "lower": round(f.unique_viewers_lower),
                               "upper": round(f.unique_viewers_upper)}}


def top_posts_answer(client, subject, start: datetime, end: datetime, limit: int) -> dict:
    from pipelines.serve.figures_from_rollups import subject_top_posts

    frame = subject_top_posts(client, subject, start, end, limit)
    return {"subject_id": subject.id, "posts": frame.to_dict("records")}


def health_answer(client) -> dict:
    from pipelines.store.queries import query_text

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
