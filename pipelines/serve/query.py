"""The query API: figures read from ClickHouse as analysts see them, unique counts as sketch unions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from pipelines.config import REPO_ROOT
from pipelines.rollups import sketches

QUERIES_DIR = REPO_ROOT / "sql" / "queries"
# Wide enough for any event; 18.16 cannot compare DateTime with dates past 2105.
ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@cache
def query_text(name: str) -> str:
    path = QUERIES_DIR / f"{name}.sql"
    if not path.is_file():
        raise KeyError(f"no analyst query named {name!r} in {QUERIES_DIR}")
    return path.read_text()


@dataclass(frozen=True)
class PostFigures:
    post_id: int
    views: int
    impressions: int
    minutes: int
    unique_viewers: float
    unique_viewers_lower: float
    unique_viewers_upper: float


def post_figures(client, post_id: int, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1]) -> PostFigures:
    """Exact views and impressions of a post in [start, end), and its unique viewers (sketch union)."""
    rows = client.execute(
        query_text("post_minutes"),
        {"post_id": post_id, "from": start, "to": end},
        settings={"strings_as_bytes": True},
    )
    merged = sketches.union(row[3] for row in rows)
    estimate, lower, upper = sketches.estimate_with_bounds(merged)
    return PostFigures(
        post_id=post_id,
        views=sum(row[1] for row in rows),
        impressions=sum(row[2] for row in rows),
        minutes=len(rows),
        unique_viewers=estimate,
        unique_viewers_lower=lower,
        unique_viewers_upper=upper,
    )


def all_posts_totals(client, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1]) -> dict[str, int]:
    (posts, views, impressions), = client.execute(query_text("all_posts_totals"), {"from": start, "to": end})
    return {"posts": posts, "views": views, "impressions": impressions}


def query_files() -> list[Path]:
    return sorted(QUERIES_DIR.glob("*.sql"))


class QueryError(ValueError):
    """A question the data cannot answer as asked; the message says what to change."""


class RangeError(QueryError):
    """A range that is not one: `bound` names the side at fault (as the caller named it)."""

    def __init__(self, bound: str, message: str):
        super().__init__(message)
        self.bound = bound


def local_range(start: str, end: str, zone, names: tuple[str, str] = ("from", "to")) -> tuple[datetime, datetime]:
    """Local times ('2024-08-12 19:47', ISO; a time with its own offset keeps it) in `zone` -> an
    aware UTC [start, end). `names` are the bounds as the caller's user writes them."""
    bounds = []
    for name, text in zip(names, (start, end), strict=True):
        try:
            local = datetime.fromisoformat(text)
        except ValueError as exc:
            raise RangeError(name, f"{name} {text!r} is not a time: write it like '2024-08-12 19:47'") from exc
        bounds.append((local if local.tzinfo else local.replace(tzinfo=zone)).astimezone(UTC))
    if bounds[1] <= bounds[0]:
        raise RangeError(names[1], f"the range ends ({end}) before it starts ({start}): swap {names[0]} and "
                         f"{names[1]}")
    return bounds[0], bounds[1]


def parse_range(start: str, end: str, time_zone: str) -> tuple[datetime, datetime]:
    """'YYYY-MM-DD HH:MM' local times in time_zone -> an aware UTC [start, end) (the CLI's range)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        zone = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise QueryError(f"unknown time zone {time_zone!r}: use an IANA name like America/New_York or UTC") from exc
    return local_range(start, end, zone, ("--from", "--to"))


@dataclass(frozen=True)
class SubjectFigures:
    subject_id: str
    start: datetime
    end: datetime
    subject_views: int
    posts_about: int
    views_of_posts_about: int
    combined_views: int
    unique_viewers: float
    unique_viewers_lower: float
    unique_viewers_upper: float
    minutes: object  # pandas.DataFrame or None: window_start, subject_views, views_of_posts_about,
    #                  combined_views, unique_viewers, unique_viewers_lower, unique_viewers_upper
    listeners: ListenerFigures | None = None
    time_zone: str = "UTC"


@dataclass(frozen=True)
class ListenerFigures:
    space_id: int
    peak_listeners: int
    peak_minute: datetime | None
    unique_listeners: float
    unique_listeners_lower: float
    unique_listeners_upper: float
    minutes: object  # pandas.DataFrame: window_start, listeners


def space_listeners(client, space_id: int, start: datetime, end: datetime) -> ListenerFigures:
    """Concurrent listeners per minute in [start, end) (sessions open in the minute), the peak
    and its minute, unique listeners (HLL). Sessions that began before start count from it."""
    import pandas as pd

    from pipelines.rollups.listeners import concurrent_per_minute, sessions

    # A session open at `start` began at most a Space's length earlier; read a day back.
    lookback = datetime.fromtimestamp(max(0.0, start.timestamp() - 86_400), UTC)
    events = client.execute(query_text("space_presence"), {"space_id": space_id, "from": lookback, "to": end})
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    in_range = [(listener, b, e) for listener, b, e in sessions(events) if e > start_ms and b < end_ms]
    spans = [(max(b, start_ms), min(e, end_ms)) for _, b, e in in_range]
    minutes = max(0, (end_ms - start_ms + 59_999) // 60_000)
    curve = concurrent_per_minute(spans, start_ms, minutes) if spans else [0] * minutes
    frame = pd.DataFrame({
        "window_start": [datetime.fromtimestamp((start_ms + i * 60_000) / 1000, UTC) for i in range(minutes)],
        "listeners": list(curve),
    })
    listener_ids = {listener for listener, _, _ in in_range}
    estimate, lower, upper = sketches.estimate_with_bounds(sketches.sketch_of(listener_ids))
    peak_at = int(frame.listeners.idxmax()) if spans else None
    return ListenerFigures(
        space_id=space_id, peak_listeners=int(frame.listeners.max()) if spans else 0,
        peak_minute=frame.window_start[peak_at] if peak_at is not None else None,
        unique_listeners=estimate, unique_listeners_lower=lower, unique_listeners_upper=upper, minutes=frame,
    )


def conversation_posts(client, subject) -> tuple[set[int], dict[int, datetime]]:
    """(posts about the subject, creation time of every known post)."""
    from pipelines.rollups.subjects import posts_about

    rows = client.execute(query_text("posts_graph"))
    created = {row[0]: row[5] for row in rows}
    return posts_about(subject, ((r[0], r[1], r[2], r[3], r[4]) for r in rows)), created


ROW_COLUMNS = ["post_id", "window_start", "views", "impressions", "sketch"]


def subject_figures(client, subject, start: datetime, end: datetime, with_minutes: bool = False) -> SubjectFigures:
    """The published figures of a subject in [start, end): exact counts, unique viewers as the
    union of the sketches of the root and the posts about it. Whole hours that were rebuilt
    are read from post_hour (one row per post and hour), the rest from post_minute; the
    per-minute frame (minute rows throughout) only when with_minutes."""
    import pandas as pd

    about, created = conversation_posts(client, subject)
    members = [{"post_id": subject.root_post_id}] + [{"post_id": p} for p in about]
    external = [{"name": "conversation_posts", "structure": [("post_id", "UInt64")], "data": members}]

    def fetch(name: str, segment_start: datetime, segment_end: datetime) -> list[tuple]:
        return client.execute(query_text(name), {"from": segment_start, "to": segment_end},
                              external_tables=external, settings={"strings_as_bytes": True})

    hours = _whole_hours(client, start, end)
    rows, spans = [], []
    for segment_start, segment_end in _uncovered(start, end, hours):
        found = fetch("conversation_minutes", segment_start, segment_end)
        rows += found
        spans += [(_utc_of(r[1]), _utc_of(r[1]) + timedelta(minutes=1)) for r in found]
    if hours:
        found = fetch("conversation_hours", min(hours), max(hours) + HOUR)
        rows += [r for r in found if _utc_of(r[1]) in hours]
        spans += [(_utc_of(r[1]), _utc_of(r[1]) + HOUR) for r in found]
    if not rows:
        raise QueryError(
            f"no rows for subject {subject.id} between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC: "
            "check the range (times are in the subject's zone unless --tz says otherwise) and that the pipeline ran"
        )
    totals = pd.DataFrame(rows, columns=ROW_COLUMNS)
    totals["is_root"] = totals.post_id == subject.root_post_id
    minutes = None
    if with_minutes:
        detail = pd.DataFrame(fetch("conversation_minutes", start, end), columns=ROW_COLUMNS)
        minutes = _per_minute(detail.assign(is_root=detail.post_id == subject.root_post_id))
    estimate, lower, upper = sketches.estimate_with_bounds(sketches.union(totals.sketch))
    subject_views = int(totals.views[totals.is_root].sum())
    related_views = int(totals.views[~totals.is_root].sum())
    naive = (start.replace(tzinfo=None), end.replace(tzinfo=None))
    posts_created = sum(1 for p in about if p in created and naive[0] <= created[p] < naive[1])
    data_start, data_end = min(s for s, _ in spans), max(e for _, e in spans)
    return SubjectFigures(
        subject_id=subject.id, start=start, end=end, subject_views=subject_views,
        posts_about=posts_created, views_of_posts_about=related_views,
        combined_views=subject_views + related_views, unique_viewers=estimate,
        unique_viewers_lower=lower, unique_viewers_upper=upper, minutes=minutes,
        listeners=space_listeners(client, subject.space_id, max(start, data_start), min(end, data_end))
        if subject.space_id else None,
        time_zone=subject.time_zone,
    )


def _uncovered(start: datetime, end: datetime, hours: set[datetime]) -> list[tuple[datetime, datetime]]:
    """[start, end) minus the covered hours, as a list of segments."""
    segments, cursor = [], start
    for hour in sorted(hours):
        if cursor < hour:
            segments.append((cursor, hour))
        cursor = max(cursor, hour + HOUR)
    if cursor < end:
        segments.append((cursor, end))
    return segments


HOUR = timedelta(hours=1)


def _utc_of(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _hour_of(moment: datetime) -> datetime:
    return _utc_of(moment).replace(minute=0, second=0, microsecond=0)


def _whole_hours(client, start: datetime, end: datetime) -> set[datetime]:
    """Hours lying wholly inside [start, end) that have post_hour rows."""
    first = _hour_of(start) + (HOUR if _hour_of(start) < start else timedelta(0))
    last = _hour_of(end)  # exclusive
    if last <= first:
        return set()
    rebuilt = {_utc_of(h) for (h,) in client.execute(query_text("rebuilt_hours"), {"from": first, "to": last})}
    return {h for h in rebuilt if first <= h < last}


def _per_minute(frame):
    import pandas as pd

    per_minute = []
    for window_start, group in frame.groupby("window_start", sort=True):
        estimate, lower, upper = sketches.estimate_with_bounds(sketches.union(group.sketch))
        root_views = int(group.views[group.is_root].sum())
        per_minute.append((window_start, root_views, int(group.views.sum()) - root_views, int(group.views.sum()),
                           estimate, lower, upper))
    return pd.DataFrame(per_minute, columns=[
        "window_start", "subject_views", "views_of_posts_about", "combined_views",
        "unique_viewers", "unique_viewers_lower", "unique_viewers_upper"])


def compact(n: float) -> str:
    """73000000 -> '73.0M', 998000 -> '998K', 1071000000 -> '1.07B', as the figures were published."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            value = n / size
            return f"{value:.2f}{suffix}" if value < 10 else (
                f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}")
    return f"{n:.0f}"


def headline(figures: SubjectFigures) -> str:
    spread = (figures.unique_viewers_upper - figures.unique_viewers_lower) / 2
    pct = 100 * spread / figures.unique_viewers if figures.unique_viewers else 0.0
    line = (f"{compact(figures.subject_views)} views · {compact(figures.posts_about)} posts · "
            f"{compact(figures.views_of_posts_about)} views of them · {compact(figures.combined_views)} combined · "
            f"{compact(figures.unique_viewers)} unique viewers (±{pct:.1f} %)")
    listeners = figures.listeners
    if listeners and listeners.peak_minute is not None:
        from zoneinfo import ZoneInfo

        local = listeners.peak_minute.astimezone(ZoneInfo(figures.time_zone))
        line += f" · peak {compact(listeners.peak_listeners)} listeners at {local:%H:%M} {local.tzname()}"
    return line


def breakdown(client, post_id: int, by: str, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1]):
    """A post's views and impressions by surface, or its impressions by action, as a DataFrame."""
    import pandas as pd

    queries = {"surface": ("views_by_surface", ["surface", "views", "impressions"]),
               "action": ("impressions_by_action", ["action", "impressions"])}
    if by not in queries:
        raise QueryError(f"breakdown by {by!r}: choose one of {', '.join(queries)}")
    name, columns = queries[by]
    rows = client.execute(query_text(name), {"post_id": post_id, "from": start, "to": end})
    return pd.DataFrame(rows, columns=columns)


def top_posts(client, subject, start: datetime, end: datetime, limit: int = 10):
    """The subject's most viewed posts about it (root included) in [start, end), as a DataFrame."""
    import pandas as pd

    about, _ = conversation_posts(client, subject)
    members = [{"post_id": subject.root_post_id}] + [{"post_id": p} for p in about]
    rows = client.execute(
        query_text("top_posts"), {"from": start, "to": end, "limit": int(limit)},
        external_tables=[{"name": "conversation_posts", "structure": [("post_id", "UInt64")], "data": members}],
    )
    return pd.DataFrame(rows, columns=["post_id", "views", "impressions"])


# --- from the subject rollups (pipelines/rollups/subject_rollups.py) ----------------------------------

DAY = timedelta(days=1)
GRAIN_LENGTH = {"minute": timedelta(minutes=1), "hour": HOUR, "day": DAY}
HEADLINE_COLUMNS = [
    "grain", "window_start", "subject_views", "subject_impressions", "posts_new", "posts_total",
    "views_of_posts_about", "impressions_of_posts_about", "combined_views", "impressions", "post_rows",
    "unique_viewers_sketch", "listeners", "peak_minute", "unique_listeners_sketch",
]


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step


def _floor(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1)
    seconds = int((moment - epoch).total_seconds())
    return epoch + timedelta(seconds=seconds - seconds % int(step.total_seconds()))


def grain_bounds(start: datetime, end: datetime) -> dict[str, datetime]:
    """How subject_headline.sql covers [start, end): minutes at the edges, whole UTC hours, whole
    UTC days; start <= hour_from <= day_from <= day_to <= hour_to <= end (naive UTC)."""
    start, end = _naive(start), _naive(end)
    hour_from, hour_to = _ceil(start, HOUR), _floor(end, HOUR)
    if hour_from >= hour_to:
        hour_from = hour_to = end
    day_from, day_to = _ceil(hour_from, DAY), _floor(hour_to, DAY)
    if day_from >= day_to:
        day_from = day_to = hour_to
    return {"from": start, "to": end, "hour_from": hour_from, "hour_to": hour_to, "day_from": day_from,
            "day_to": day_to}


def subject_rollup_rows(client, subject, start: datetime, end: datetime) -> list[dict]:
    """The fewest rollup rows covering [start, end) (HEADLINE_COLUMNS), oldest first."""
    rows = client.execute(query_text("subject_headline"), {"subject_id": subject.id, **grain_bounds(start, end)},
                          settings={"strings_as_bytes": True})
    found = [dict(zip(HEADLINE_COLUMNS, row, strict=True)) for row in rows]
    for row in found:
        row["grain"] = row["grain"].decode() if isinstance(row["grain"], bytes) else row["grain"]
        row["window_start"] = _naive(row["window_start"])
    return found


def subject_minute_rows(client, subject, start: datetime, end: datetime, grain: str = "minute"):
    """The subject's series at one grain in [start, end) (subject_series.sql), as a DataFrame."""
    import pandas as pd

    rows = client.execute(query_text("subject_series"), {
        "subject_id": subject.id, "grain": grain, "from": _naive(start), "to": _naive(end)})
    return pd.DataFrame(rows, columns=[
        "window_start", "subject_views", "posts_new", "posts_total", "views_of_posts_about", "combined_views",
        "impressions", "unique_viewers", "listeners"])


def subject_rollup_figures(client, subject, start: datetime, end: datetime, with_minutes: bool = False
                           ) -> SubjectFigures:
    """The figures of subject_figures, read from the subject rollups: O(windows in the range)
    rows, never the posts table. Exact counts; unique viewers and listeners as sketch unions."""
    import pandas as pd

    rows = subject_rollup_rows(client, subject, start, end)
    data = [r for r in rows if r["post_rows"] > 0]
    if not data:
        raise QueryError(
            f"no rows for subject {subject.id} between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC: "
            "check the range (times are in the subject's zone unless --tz says otherwise) and that the pipeline ran"
        )
    estimate, lower, upper = sketches.estimate_with_bounds(sketches.union(r["unique_viewers_sketch"] for r in data))
    subject_views = sum(r["subject_views"] for r in rows)
    related_views = sum(r["views_of_posts_about"] for r in rows)
    minutes = None
    if with_minutes:
        edges = {**grain_bounds(start, end), **dict.fromkeys(("hour_from", "hour_to", "day_from", "day_to"),
                                                               _naive(end))}
        detail = client.execute(query_text("subject_headline"), {"subject_id": subject.id, **edges},
                                settings={"strings_as_bytes": True})
        detail = [dict(zip(HEADLINE_COLUMNS, r, strict=True)) for r in detail]
        detail = [r for r in detail if r["post_rows"] > 0]
        bounds = [sketches.estimate_with_bounds(sketches.from_bytes(r["unique_viewers_sketch"])) for r in detail]
        minutes = pd.DataFrame({
            "window_start": [r["window_start"] for r in detail],
            "subject_views": [r["subject_views"] for r in detail],
            "views_of_posts_about": [r["views_of_posts_about"] for r in detail],
            "combined_views": [r["combined_views"] for r in detail],
            "unique_viewers": [b[0] for b in bounds], "unique_viewers_lower": [b[1] for b in bounds],
            "unique_viewers_upper": [b[2] for b in bounds]})
    listeners = None
    if subject.space_id:
        span_start = min(r["window_start"] for r in data)
        span_end = max(r["window_start"] + GRAIN_LENGTH[r["grain"]] for r in data)
        listeners = _rollup_listeners(client, subject, [r for r in rows if span_start <= r["window_start"] < span_end])
    return SubjectFigures(
        subject_id=subject.id, start=start, end=end, subject_views=subject_views,
        posts_about=sum(r["posts_new"] for r in rows), views_of_posts_about=related_views,
        combined_views=subject_views + related_views, unique_viewers=estimate, unique_viewers_lower=lower,
        unique_viewers_upper=upper, minutes=minutes, listeners=listeners, time_zone=subject.time_zone,
    )


def _rollup_listeners(client, subject, rows: list[dict]) -> ListenerFigures:
    """Peak concurrent listeners (and its minute: the first minute at the peak) and unique
    listeners over rollup rows of any grain (oldest first)."""
    peak = max((r["listeners"] for r in rows), default=0)
    peak_minute = None
    if peak:  # an hour or day row knows the minute of its peak
        peak_minute = _utc_of(next(r for r in rows if r["listeners"] == peak)["peak_minute"])
    estimate, lower, upper = sketches.estimate_with_bounds(sketches.union(r["unique_listeners_sketch"] for r in rows))
    return ListenerFigures(
        space_id=subject.space_id, peak_listeners=peak, peak_minute=peak_minute, unique_listeners=estimate,
        unique_listeners_lower=lower, unique_listeners_upper=upper, minutes=None,
    )


def subject_top_posts(client, subject, start: datetime, end: datetime, limit: int = 10):
    """The subject's most viewed posts (root included) in [start, end), attribution from subject_posts."""
    import pandas as pd

    rows = client.execute(query_text("subject_top_posts"), {
        "subject_id": subject.id, "root_post_id": subject.root_post_id, "from": _naive(start), "to": _naive(end),
        "limit": int(limit)})
    return pd.DataFrame(rows, columns=["post_id", "views", "impressions"])
