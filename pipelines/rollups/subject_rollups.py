"""Subject rollups: which posts are about each tracked subject, and its figures per minute, hour, day.

`refresh(client, settings)` brings every tracked subject's rollups up to what the loader has
written, incrementally and idempotently: it reads what changed since its last run from
`rollup_changes` (filled by materialized views on direct inserts into post_minute, posts and
space_presence, and by pipelines.stream.change_feed for what ClickHouse's Kafka consumers load),
attributes new posts (a reply to a reply, and posts that arrived before what they answer),
recomputes only the minutes touched and rewrites their hour and day rows. A subject seen for
the first time is built from scratch. Running it twice, or concurrently with the hourly
rebuild, gives the same rows: every row is recomputed from the source tables, never added to.

`rebuild_hour(client, subject, hour)` recomputes one hour from post_minute (after the backfill
swapped in the archive's rows, which bypasses the materialized views) and `compare_hour` says
whether the stored rows agree with that: the hourly Dagster reconciliation runs both.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache

from pipelines.config import REPO_ROOT
from pipelines.rollups import sketches
from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS, sessions
from pipelines.rollups.subjects import Subject, load_subjects
from pipelines.store.clickhouse import SUBJECT_POSTS, SUBJECT_REFRESH_STATE, SUBJECT_ROLLUP, insert_rows
from pipelines.store.tables import TABLE_COLUMNS

log = logging.getLogger("viewcount.subject_rollups")
SQL_DIR = REPO_ROOT / "sql" / "subject_rollups"
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
GRAINS = ("minute", "hour", "day")
# Changes are re-read from this far before the last read position: an insert stamped with the
# server clock at its start can become visible a little after a refresh read past that stamp.
# Re-reading costs a little work, never a wrong row (every row is recomputed, not added to).
CHANGES_OVERLAP = timedelta(seconds=30)
# A presence event moves the listener curve from its own minute to a heartbeat timeout after it.
LISTENER_REACH_AFTER = timedelta(milliseconds=HEARTBEAT_TIMEOUT_MS) + 2 * MINUTE
# Sessions open in a minute all have an event at most a heartbeat timeout before it: read this far back.
LISTENER_LOOKBACK = timedelta(milliseconds=HEARTBEAT_TIMEOUT_MS) + 2 * MINUTE
# Minutes computed per query (the IN list), and gaps that split presence reads into runs.
MINUTES_PER_QUERY = 240
PRESENCE_RUN_GAP = timedelta(minutes=30)
# Post ids per IN list: 10,000 ids are about 100 KB of query text (max_query_size is 256 KiB).
IDS_PER_QUERY = 10_000
EPOCH = datetime(1970, 1, 1)
# How often the pipeline refreshes while it runs: a closed minute is in the rollups within the
# stream's watermark + the loader's batch + this + one refresh (goal: 15 s).
REFRESH_INTERVAL_S = 1.0
# The change log keeps this much before the oldest subject's read position; pruned this often.
CHANGES_KEPT = timedelta(days=2)
PRUNE_INTERVAL_S = 3600.0

ROLLUP_COLUMNS = TABLE_COLUMNS[SUBJECT_ROLLUP]
COUNT_COLUMNS = ("subject_views", "subject_impressions", "posts_new", "views_of_posts_about",
                 "impressions_of_posts_about", "combined_views", "impressions", "post_rows")
SUBJECT_POSTS_COLUMNS = TABLE_COLUMNS[SUBJECT_POSTS]


@cache
def sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def new_version() -> int:
    """Microseconds since the epoch: a later write of a window wins (ReplacingMergeTree)."""
    return time.time_ns() // 1000


def naive_utc(moment: datetime) -> datetime:
    """ClickHouse hands DateTime back naive (UTC on our servers); compare like with like."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _floor(moment: datetime, step: timedelta) -> datetime:
    seconds = int((moment - EPOCH).total_seconds())
    return EPOCH + timedelta(seconds=seconds - seconds % int(step.total_seconds()))


@dataclass
class RefreshReport:
    subject_id: str
    full: bool
    new_posts: int = 0
    minutes: int = 0
    hours: int = 0
    days: int = 0
    seconds: float = 0.0
    read_to: datetime | None = None


# --- attribution ------------------------------------------------------------------------------

def _members_among(client, subject: Subject, post_ids: Iterable[int]) -> set[int]:
    ids = sorted(set(post_ids))
    found: set[int] = set()
    for i in range(0, len(ids), IDS_PER_QUERY):  # the IN list counts against max_query_size
        found |= {pid for (pid,) in client.execute(sql("members_among"), {
            "subject_id": subject.id, "post_ids": tuple(ids[i:i + IDS_PER_QUERY])})}
    return found


def _write_members(client, subject: Subject, created: dict[int, datetime]) -> None:
    version = new_version()
    insert_rows(client, SUBJECT_POSTS, SUBJECT_POSTS_COLUMNS,
                [(subject.id, pid, at, version) for pid, at in sorted(created.items())])


def attribute_new_posts(client, subject: Subject, since: datetime) -> dict[int, datetime]:
    """Attribute the posts written since `since`: those with a tracked tag or pointing at the root
    or a post already about the subject, then, down the tree, posts that point at those (they may
    have arrived first). Stores them in subject_posts; returns {post_id: created_at} of the new."""
    candidates = client.execute(sql("new_posts"), {"since": since})
    if not candidates:
        return {}
    tracked = set(subject.tags)
    parents = {pid: {reply_to, quote_of, *links} - {0, pid} for pid, reply_to, quote_of, links, _, _ in candidates}
    created = {pid: naive_utc(at) for pid, _, _, _, _, at in candidates}
    already = _members_among(client, subject, created)
    known = _members_among(client, subject, {p for ps in parents.values() for p in ps}) | {subject.root_post_id}
    new: dict[int, datetime] = {}
    pending = {pid for pid in created if pid not in already and pid != subject.root_post_id}
    for pid, _, _, _, tags, _ in candidates:
        if pid in pending and tracked.intersection(tags):
            new[pid] = created[pid]
    changed = True
    while changed:  # within the batch: a reply to a reply both arriving now
        changed = False
        for pid in pending - new.keys():
            if parents[pid] & (known | new.keys()):
                new[pid] = created[pid]
                changed = True
    frontier = dict(new)
    while frontier:  # posts that arrived before what they answer, down the tree
        ids = sorted(frontier)
        found = []
        for i in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[i:i + IDS_PER_QUERY]
            found += client.execute(sql("children"), {"post_ids": tuple(chunk), "post_id_array": chunk,
                                                      "created_from": min(frontier[p] for p in chunk)})
        unseen = {pid: naive_utc(at) for pid, at in found if pid not in new and pid != subject.root_post_id}
        unseen = {pid: at for pid, at in unseen.items() if pid not in _members_among(client, subject, unseen)}
        new.update(unseen)
        frontier = unseen
    if new:
        _write_members(client, subject, new)
    return new


# --- minute rows ------------------------------------------------------------------------------

def _empty_row(subject: Subject, grain: str, window_start: datetime) -> dict:
    row = dict.fromkeys(COUNT_COLUMNS, 0)
    row.update(subject_id=subject.id, grain=grain, window_start=window_start, posts_total=0,
               unique_viewers_sketch=b"", unique_viewers=0.0, listeners=0, peak_minute=window_start,
               unique_listeners_sketch=b"")
    return row


def _conversation(client, subject: Subject, minutes: list[datetime], rows: dict[datetime, dict]) -> None:
    for i in range(0, len(minutes), MINUTES_PER_QUERY):
        chunk = minutes[i:i + MINUTES_PER_QUERY]
        found = client.execute(sql("conversation_rows"), {
            "subject_id": subject.id, "root_post_id": subject.root_post_id, "minutes": tuple(chunk),
            "from": chunk[0], "to": chunk[-1] + MINUTE}, settings={"strings_as_bytes": True})
        sketch_bytes: dict[datetime, list[bytes]] = defaultdict(list)
        for window_start, is_root, views, impressions, sketch in found:
            window_start = naive_utc(window_start)
            row = rows[window_start]
            if is_root:
                row["subject_views"] += views
                row["subject_impressions"] += impressions
            else:
                row["views_of_posts_about"] += views
                row["impressions_of_posts_about"] += impressions
            row["post_rows"] += 1
            sketch_bytes[window_start].append(sketch)
        for window_start, parts in sketch_bytes.items():
            merged = sketches.union(parts)
            rows[window_start]["unique_viewers_sketch"] = sketches.to_bytes(merged)
            rows[window_start]["unique_viewers"] = merged.get_estimate()


def _runs(minutes: list[datetime], gap: timedelta) -> list[list[datetime]]:
    runs: list[list[datetime]] = []
    for minute in minutes:
        if runs and minute - runs[-1][-1] <= gap:
            runs[-1].append(minute)
        else:
            runs.append([minute])
    return runs


def _listeners(client, subject: Subject, minutes: list[datetime], rows: dict[datetime, dict]) -> None:
    """Concurrent listeners of the subject's Space in each minute (sessions open at any moment of
    it, as pipelines.rollups.listeners defines them) and the sketch of who they were."""
    from pipelines.serve.query import query_text

    for run in _runs(minutes, PRESENCE_RUN_GAP):
        start, end = run[0], run[-1] + MINUTE
        events = client.execute(query_text("space_presence"), {
            "space_id": subject.space_id, "from": start - LISTENER_LOOKBACK, "to": end})
        wanted = set(run)
        present: dict[datetime, set[int]] = defaultdict(set)
        start_ms = int(start.replace(tzinfo=UTC).timestamp() * 1000)
        end_ms = int(end.replace(tzinfo=UTC).timestamp() * 1000)
        for listener, begin, finish in sessions(events):
            begin, finish = max(begin, start_ms), min(finish, end_ms)
            if finish <= begin:
                continue
            # A session ending exactly at a minute's start is not in that minute.
            for index in range((begin - start_ms) // 60_000, (finish - 1 - start_ms) // 60_000 + 1):
                minute = start + index * MINUTE
                if minute in wanted:
                    present[minute].add(listener)
        for minute in run:
            ids = present.get(minute, set())
            rows[minute]["listeners"] = len(ids)
            rows[minute]["unique_listeners_sketch"] = sketches.to_bytes(sketches.sketch_of(ids)) if ids else b""


def _existing(client, subject: Subject, grain: str, start: datetime, end: datetime) -> list[dict]:
    found = client.execute(sql("rollup_rows"), {"subject_id": subject.id, "grain": grain, "from": start, "to": end},
                           settings={"strings_as_bytes": True})
    return [_decoded(dict(zip(ROLLUP_COLUMNS, row, strict=True))) for row in found]


def _minutes(rows: Iterable[tuple]) -> set[datetime]:
    return {naive_utc(row[0]) for row in rows}


def _decoded(row: dict) -> dict:
    for name in ("subject_id", "grain"):
        if isinstance(row[name], bytes):
            row[name] = row[name].decode()
    row["window_start"] = naive_utc(row["window_start"])
    row["peak_minute"] = naive_utc(row["peak_minute"])
    return row


def write_minutes(client, subject: Subject, minutes: Iterable[datetime], totals_from: datetime | None = None) -> tuple:
    """Recompute the subject's minute rows for `minutes` from the source tables and write them,
    with the hour and day rows they fall in. totals_from: posts were added from there on, so the
    running total of every later minute row changes too (those are rewritten, counts kept).
    Returns (minutes written, hours, days)."""
    wanted = sorted({_floor(naive_utc(m), MINUTE) for m in minutes})
    rows = {m: _empty_row(subject, "minute", m) for m in wanted}
    if wanted:
        _conversation(client, subject, wanted, rows)
        if subject.space_id:
            _listeners(client, subject, wanted, rows)
    if totals_from is not None:
        totals_from = _floor(naive_utc(totals_from), MINUTE)
        for row in _existing(client, subject, "minute", totals_from, datetime(2100, 1, 1)):
            rows.setdefault(row["window_start"], row)
    if not rows:
        return 0, 0, 0
    first = min(rows)
    created = {naive_utc(m): n for m, n in client.execute(sql("posts_created"), {"subject_id": subject.id,
                                                                                  "from": first})}
    running = created.pop(EPOCH, 0)
    creations = sorted(created.items())
    taken = 0
    for minute in sorted(rows):
        while taken < len(creations) and creations[taken][0] <= minute:
            running += creations[taken][1]
            taken += 1
        rows[minute]["posts_new"] = created.get(minute, 0)
        rows[minute]["posts_total"] = running
    for row in rows.values():
        row["combined_views"] = row["subject_views"] + row["views_of_posts_about"]
        row["impressions"] = row["subject_impressions"] + row["impressions_of_posts_about"]
    _insert(client, rows.values())
    hours = sorted({_floor(m, HOUR) for m in rows})
    _roll_up(client, subject, "minute", "hour", hours, HOUR)
    days = sorted({_floor(h, DAY) for h in hours})
    _roll_up(client, subject, "hour", "day", days, DAY)
    return len(rows), len(hours), len(days)


def _insert(client, rows: Iterable[dict]) -> None:
    version = new_version()
    insert_rows(client, SUBJECT_ROLLUP, ROLLUP_COLUMNS,
                [tuple({**row, "version": version}[c] for c in ROLLUP_COLUMNS) for row in rows])


def combine(subject_id: str, grain: str, window_start: datetime, parts: list[dict]) -> dict:
    """One row for a longer window from the rows inside it: counts add up, sketches are unions,
    listeners the peak, the running total the last one's."""
    row = {name: sum(p[name] for p in parts) for name in COUNT_COLUMNS}
    viewers = sketches.union(p["unique_viewers_sketch"] for p in parts)
    listeners = [p["unique_listeners_sketch"] for p in parts if p["unique_listeners_sketch"]]
    row.update(
        subject_id=subject_id, grain=grain, window_start=window_start,
        posts_total=max(parts, key=lambda p: p["window_start"])["posts_total"],
        unique_viewers_sketch=sketches.to_bytes(viewers) if row["post_rows"] else b"",
        unique_viewers=viewers.get_estimate() if row["post_rows"] else 0.0,
        listeners=max(p["listeners"] for p in parts),
        # The first window at the peak (ties: the earliest), and its own peak minute.
        peak_minute=min(parts, key=lambda p: (-p["listeners"], p["window_start"]))["peak_minute"],
        unique_listeners_sketch=sketches.to_bytes(sketches.union(listeners)) if listeners else b"",
    )
    return row


def _roll_up(client, subject: Subject, finer: str, grain: str, windows: list[datetime], step: timedelta) -> None:
    if not windows:
        return
    parts = _existing(client, subject, finer, windows[0], windows[-1] + step)
    grouped: dict[datetime, list[dict]] = defaultdict(list)
    for part in parts:
        grouped[_floor(part["window_start"], step)].append(part)
    _insert(client, [combine(subject.id, grain, w, grouped[w]) for w in windows if grouped.get(w)])


# --- refresh and build ------------------------------------------------------------------------

def server_now(client) -> datetime:
    """The server's clock (naive UTC): rollup_changes.changed_at is stamped with it."""
    ((now,),) = client.execute(sql("server_now"))
    return naive_utc(now)


def _read_to(client, subject: Subject) -> datetime | None:
    found = client.execute(sql("read_state"), {"subject_id": subject.id})
    return naive_utc(found[0][0]) if found else None


def _record_read_to(client, subject: Subject, read_to: datetime) -> None:
    insert_rows(client, SUBJECT_REFRESH_STATE, TABLE_COLUMNS[SUBJECT_REFRESH_STATE],
                [(subject.id, read_to, server_now(client), new_version())])


def _presence_minutes(event_minutes: Iterable[datetime]) -> set[datetime]:
    reach = int(LISTENER_REACH_AFTER / MINUTE)
    return {m + i * MINUTE for m in event_minutes for i in range(reach + 1)}


def _minutes_of_posts(client, post_ids: Iterable[int]) -> set[datetime]:
    ids = sorted(set(post_ids))
    found: set[datetime] = set()
    for i in range(0, len(ids), IDS_PER_QUERY):
        found |= _minutes(client.execute(sql("minutes_of_posts"), {"post_ids": tuple(ids[i:i + IDS_PER_QUERY])}))
    return found


def refresh_subject(client, subject: Subject) -> RefreshReport:
    started = time.monotonic()
    read_to = server_now(client)  # before reading: what lands later is read next time
    last = _read_to(client, subject)
    if last is None:
        report = build_subject(client, subject)
    else:
        since = last - CHANGES_OVERLAP
        report = RefreshReport(subject.id, full=False)
        new = attribute_new_posts(client, subject, since)
        dirty = _minutes(client.execute(sql("changed_minutes"), {
            "since": since, "subject_id": subject.id, "root_post_id": subject.root_post_id}))
        if subject.space_id:
            dirty |= _presence_minutes(_minutes(client.execute(
                sql("changed_presence"), {"since": since, "space_id": subject.space_id})))
        if new:
            dirty |= _minutes_of_posts(client, new) | {_floor(at, MINUTE) for at in new.values()}
        report.new_posts = len(new)
        report.minutes, report.hours, report.days = write_minutes(
            client, subject, dirty, totals_from=min(new.values()) if new else None)
    _record_read_to(client, subject, read_to)
    report.read_to = read_to
    report.seconds = time.monotonic() - started
    return report


def refresh(client, settings=None, subjects: dict[str, Subject] | None = None) -> list[RefreshReport]:
    """Bring every tracked subject's rollups up to what is in ClickHouse now (see the module
    docstring). Cheap when little changed: call it after every loader batch."""
    del settings  # the client already points at the right database; kept for the runner's call
    return [refresh_subject(client, subject) for subject in (subjects or load_subjects()).values()]


def prune_changes(client, reports: Iterable[RefreshReport]) -> list[str]:
    """Drop the day partitions of rollup_changes every tracked subject has read past, keeping
    CHANGES_KEPT before the oldest read position (18.16 has no TTL). Returns the dropped days."""
    read_to = [r.read_to for r in reports if r.read_to is not None]
    if not read_to:
        return []
    keep_from = int((min(read_to) - CHANGES_KEPT).strftime("%Y%m%d"))
    days = [int(p) for (p,) in client.execute(sql("change_partitions"))]
    old = sorted(d for d in days if d < keep_from)
    for day in old:
        client.execute(f"ALTER TABLE rollup_changes DROP PARTITION {day:d}")
    return [str(d) for d in old]


class RefreshTimer:
    """Calls refresh at most every interval_s (the loader's batches come faster than that), and
    prunes the change log every PRUNE_INTERVAL_S."""

    def __init__(self, client, interval_s: float = REFRESH_INTERVAL_S):
        self.client, self.interval_s, self.last = client, interval_s, 0.0
        self.last_pruned = time.monotonic()
        self.reports: list[RefreshReport] = []

    def maybe(self, final: bool = False) -> bool:
        """Refresh if due (or `final`); True if it refreshed."""
        if not final and time.monotonic() - self.last < self.interval_s:
            return False
        self.last = time.monotonic()
        self.reports = refresh(self.client)
        if time.monotonic() - self.last_pruned >= PRUNE_INTERVAL_S:
            self.last_pruned = time.monotonic()
            if dropped := prune_changes(self.client, self.reports):
                log.info("dropped the change log's days %s: every subject has read past them", ", ".join(dropped))
        return True


def attribute_all(client, subject: Subject) -> dict[int, datetime]:
    """The whole attribution walk over every post (pipelines.rollups.subjects.posts_about); stores the
    posts about the subject that subject_posts lacks and returns them."""
    from pipelines.serve.query import conversation_posts

    about, created = conversation_posts(client, subject)
    missing = about - _members_among(client, subject, about) if about else set()
    new = {pid: created[pid] for pid in missing}
    if new:
        _write_members(client, subject, new)
    return new


def build_subject(client, subject: Subject) -> RefreshReport:
    """Every row of the subject from scratch: attribution over all posts, then every minute with
    views of the conversation, posts created or listeners."""
    started = time.monotonic()
    new = attribute_all(client, subject)
    minutes = _minutes(client.execute(sql("conversation_minutes"), {
        "subject_id": subject.id, "root_post_id": subject.root_post_id}))
    minutes |= _minutes(client.execute(sql("posts_created"), {"subject_id": subject.id, "from": EPOCH}))
    if subject.space_id:
        minutes |= _presence_minutes(_minutes(client.execute(sql("presence_minutes"),
                                                             {"space_id": subject.space_id})))
    written = write_minutes(client, subject, minutes, totals_from=min(minutes) if minutes else None)
    return RefreshReport(subject.id, full=True, new_posts=len(new), minutes=written[0], hours=written[1],
                         days=written[2], seconds=time.monotonic() - started)


# --- hourly reconciliation --------------------------------------------------------------------

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
    start = _floor(naive_utc(hour_start), HOUR)
    return [start + i * MINUTE for i in range(60)]


def expected_hour(client, subject: Subject, hour_start: datetime) -> dict[datetime, dict]:
    """The minute rows of the hour as the source tables give them now (nothing written)."""
    minutes = _hour_minutes(hour_start)
    rows = {m: _empty_row(subject, "minute", m) for m in minutes}
    _conversation(client, subject, minutes, rows)
    if subject.space_id:
        _listeners(client, subject, minutes, rows)
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
    stored = {r["window_start"]: r for r in _existing(client, subject, "minute", start, start + HOUR)
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
        minutes |= _minutes_of_posts(client, new) | {_floor(at, MINUTE) for at in new.values()}
    written, _, _ = write_minutes(client, subject, minutes, totals_from=min(new.values()) if new else None)
    return written


__all__ = ["refresh", "refresh_subject", "build_subject", "write_minutes", "attribute_new_posts", "attribute_all",
           "compare_hour", "rebuild_hour", "combine", "GRAINS", "ROLLUP_COLUMNS"]
