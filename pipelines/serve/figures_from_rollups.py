"""A subject's figures from the subject rollups (pipelines/rollups/subject_rollups.py): O(windows in the
range) rows, never the posts table: what `viewcount serve` answers the dashboards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.rollups import sketches
from pipelines.serve.query import HOUR, ListenerFigures, QueryError, SubjectFigures, _utc_of
from pipelines.store.queries import query_text
from pipelines.store.tables import SUBJECT_ROLLUP, TABLE_COLUMNS

DAY = timedelta(days=1)
GRAIN_LENGTH = {"minute": timedelta(minutes=1), "hour": HOUR, "day": DAY}
ROLLUP_COLUMNS = TABLE_COLUMNS[SUBJECT_ROLLUP]  # subject_headline.sql reads them all, in this order


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
    """The fewest rollup rows covering [start, end) (ROLLUP_COLUMNS), oldest first."""
    rows = client.execute(query_text("subject_headline"), {"subject_id": subject.id, **grain_bounds(start, end)},
                          settings={"strings_as_bytes": True})
    found = [dict(zip(ROLLUP_COLUMNS, row, strict=True)) for row in rows]
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
        detail = [dict(zip(ROLLUP_COLUMNS, r, strict=True)) for r in detail]
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
