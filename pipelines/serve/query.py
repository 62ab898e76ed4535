"""A post's figures from the analyst queries (pipelines.store.queries); the ranges, errors and subject figures
that `figures_from_posts` and `figures_from_rollups` share, and the headline they are printed as."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipelines.rollups import sketches
from pipelines.store.queries import query_text
from pipelines.store.tables import POST_MINUTE_COUNTS

# Wide enough for any event; 18.16 cannot compare DateTime with dates past 2105.
ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class PostFigures:
    post_id: int
    counts: dict[str, int]  # views, impressions, ...: POST_MINUTE_COUNTS, each summed over the minutes
    minutes: int
    unique_viewers: float
    unique_viewers_lower: float
    unique_viewers_upper: float


def post_figures(client, post_id: int, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1]) -> PostFigures:
    """Exact counts (views, impressions, ...) of a post in [start, end), and its unique viewers (sketch union)."""
    rows = client.execute(
        query_text("post_minutes"),
        {"post_id": post_id, "from": start, "to": end},
        settings={"strings_as_bytes": True},
    )
    minutes = [dict(zip(("window_start", *POST_MINUTE_COUNTS, "unique_viewers_sketch"), row, strict=True))
               for row in rows]
    merged = sketches.union(minute["unique_viewers_sketch"] for minute in minutes)
    estimate, lower, upper = sketches.estimate_with_bounds(merged)
    return PostFigures(
        post_id=post_id,
        counts={name: sum(minute[name] for minute in minutes) for name in POST_MINUTE_COUNTS},
        minutes=len(minutes),
        unique_viewers=estimate,
        unique_viewers_lower=lower,
        unique_viewers_upper=upper,
    )


def all_posts_totals(client, start: datetime = ALL_TIME[0], end: datetime = ALL_TIME[1]) -> dict[str, int]:
    (posts, views, impressions), = client.execute(query_text("all_posts_totals"), {"from": start, "to": end})
    return {"posts": posts, "views": views, "impressions": impressions}


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


def _utc_of(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
