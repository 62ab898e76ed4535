"""The hourly repair of the subject rollups: an hour's stored rows compared with a recomputation
from post_minute, posts and space_presence (`compare_hour`, after the backfill swapped in the
archive's rows, which bypasses the materialized views that feed the refresh), and the hour
recomputed (`rebuild_hour`), posts the stream's attribution missed added first."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipelines.rollups import sketches
from pipelines.rollups.subject_rows import (
    COUNT_COLUMNS,
    EPOCH,
    HOUR,
    MINUTE,
    attribute_all,
    conversation_into,
    empty_row,
    existing_rows,
    floor_to,
    listeners_into,
    minutes_of_posts,
    naive_utc,
    sql,
    write_minutes,
)
from pipelines.rollups.subjects import Subject


@dataclass
class SubjectDrift:
    subject_id: str
    hour_start: datetime
    missing_posts: int = 0          # posts about the subject that subject_posts lacks
    missing_windows: int = 0
    extra_windows: int = 0
    count_differences: int = 0
    estimates_outside_bounds: int = 0
    rows: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing_posts or self.missing_windows or self.extra_windows or self.count_differences
                    or self.estimates_outside_bounds)


def _hour_minutes(hour_start: datetime) -> list[datetime]:
    start = floor_to(naive_utc(hour_start), HOUR)
    return [start + i * MINUTE for i in range(60)]


def expected_hour(client, subject: Subject, hour_start: datetime) -> dict[datetime, dict]:
    """The minute rows of the hour as the source tables give them now (nothing written)."""
    minutes = _hour_minutes(hour_start)
    rows = {m: empty_row(subject, "minute", m) for m in minutes}
    conversation_into(client, subject, minutes, rows)
    if subject.space_id:
        listeners_into(client, subject, minutes, rows)
    created = {naive_utc(m): n for m, n in client.execute(sql("posts_created"), {"subject_id": subject.id,
                                                                                  "from": minutes[0]})}
    running = created.pop(EPOCH, 0)
    for minute in minutes:
        rows[minute]["posts_new"] = created.get(minute, 0)
        running += rows[minute]["posts_new"]
        rows[minute]["posts_total"] = running
    for row in rows.values():
        row["combined_views"] = row["subject_views"] + row["views_of_posts_about"]
        row["impressions"] = row["subject_impressions"] + row["impressions_of_posts_about"]
    return {m: r for m, r in rows.items() if r["post_rows"] or r["listeners"] or r["posts_new"]}


def compare_hour(client, subject: Subject, hour_start: datetime, missing_posts: int = 0) -> SubjectDrift:
    """The stored minute rows of the hour against a recomputation from post_minute, posts and
    space_presence: counts must be equal, unique estimates inside each other's bounds."""
    start = naive_utc(hour_start)
    expected = expected_hour(client, subject, start)
    stored = {r["window_start"]: r for r in existing_rows(client, subject, "minute", start, start + HOUR)
              if r["post_rows"] or r["listeners"] or r["posts_new"]}
    drift = SubjectDrift(subject.id, start, missing_posts=missing_posts, rows=len(stored))
    drift.missing_windows = len(expected.keys() - stored.keys())
    drift.extra_windows = len(stored.keys() - expected.keys())
    for minute in expected.keys() & stored.keys():
        want, have = expected[minute], stored[minute]
        differs = [c for c in (*COUNT_COLUMNS, "posts_total", "listeners") if want[c] != have[c]]
        if differs:
            drift.count_differences += 1
            drift.details.append(f"{minute:%H:%M} " + ", ".join(f"{c} {have[c]} != {want[c]}" for c in differs))
        for column in ("unique_viewers_sketch", "unique_listeners_sketch"):
            if sketches_disagree(want[column], have[column]):
                drift.estimates_outside_bounds += 1
    return drift


def sketches_disagree(a: bytes, b: bytes) -> bool:
    if not a or not b:
        return bool(a) != bool(b)
    ea, la, ua = sketches.estimate_with_bounds(sketches.from_bytes(a))
    eb, lb, ub = sketches.estimate_with_bounds(sketches.from_bytes(b))
    return not (lb <= ea <= ub and la <= eb <= ua)


def rebuild_hour(client, subject: Subject, hour_start: datetime) -> int:
    """Recompute the hour's minute rows (and its hour and day rows) from the source tables; posts
    the stream's attribution missed are added first. Returns the minute rows written."""
    new = attribute_all(client, subject)
    minutes = set(_hour_minutes(hour_start))
    if new:
        minutes |= minutes_of_posts(client, new) | {floor_to(at, MINUTE) for at in new.values()}
    written, _, _ = write_minutes(client, subject, minutes, totals_from=min(new.values()) if new else None)
    return written
