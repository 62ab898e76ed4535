"""A subject's figures at query time: every post of its conversation read from post_minute (post_hour
for rebuilt hours), listeners from the presence events; the reference the subject rollups must equal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.rollups import sketches
from pipelines.rollups.subjects import conversation_posts
from pipelines.serve.query import HOUR, ListenerFigures, QueryError, SubjectFigures, _utc_of
from pipelines.store.queries import query_text


def space_listeners(client, space_id: int, start: datetime, end: datetime) -> ListenerFigures:
    """Concurrent listeners per minute in [start, end) (sessions open in the minute), the peak
    and its minute, unique listeners (HLL). Sessions that began before start count from it."""
    import pandas as pd

    from pipelines.rollups.listeners import concurrent_per_minute, presence_sessions

    # A session open at `start` began at most a Space's length earlier; read a day back.
    lookback = datetime.fromtimestamp(max(0.0, start.timestamp() - 86_400), UTC)
    start_ms = int(start.timestamp() * 1000)
    end_ms = int(end.timestamp() * 1000)
    in_range = [(listener, b, e) for listener, b, e in zip(*(a.tolist() for a in presence_sessions(
        client, space_id, lookback, end)), strict=True) if e > start_ms and b < end_ms]
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
