"""The query API: figures read from ClickHouse as analysts see them, unique counts as sketch unions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from pipelines import sketches
from pipelines.config import REPO_ROOT

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
