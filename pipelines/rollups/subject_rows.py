"""A subject's rows: which posts are about it (attribution, stored in subject_posts as posts
arrive) and its minute, hour and day rows (subject_rollup), each recomputed from the source
tables (post_minute, posts, space_presence), never added to. The refresh
(pipelines.rollups.subject_rollups) and the hourly repair (pipelines.repair.subject_repair)
decide which minutes to write; this module writes them."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache

from pipelines.config import REPO_ROOT
from pipelines.rollups import sketches
from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS, PresenceMinutes, present
from pipelines.rollups.subjects import Subject, conversation_posts
from pipelines.store.clickhouse import SUBJECT_POSTS, SUBJECT_ROLLUP, insert_rows
from pipelines.store.tables import TABLE_COLUMNS

SQL_DIR = REPO_ROOT / "sql" / "subject_rollups"
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


GRAINS = ("minute", "hour", "day")


# A presence event moves the listener curve from its own minute to a heartbeat timeout after it.
LISTENER_REACH_AFTER = timedelta(milliseconds=HEARTBEAT_TIMEOUT_MS) + 2 * MINUTE


# Sessions open in a minute all have an event at most a heartbeat timeout before it: read this far back.
LISTENER_LOOKBACK = timedelta(milliseconds=HEARTBEAT_TIMEOUT_MS) + 2 * MINUTE


# Minutes computed per query (the IN list), and gaps that split presence reads into runs.
MINUTES_PER_QUERY = 240


PRESENCE_RUN_GAP = timedelta(minutes=30)


# Minutes whose listeners are found with one read: a row a listener and minute, and the lookback's
# (at the night's peak of 1.3M listeners, ~20M rows of 7 numbers a step).
LISTENER_MINUTES_PER_STEP = 10


# Post ids per IN list: 10,000 ids are about 100 KB of query text (max_query_size is 256 KiB).
IDS_PER_QUERY = 10_000


EPOCH = datetime(1970, 1, 1)


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


def floor_to(moment: datetime, step: timedelta) -> datetime:
    seconds = int((moment - EPOCH).total_seconds())
    return EPOCH + timedelta(seconds=seconds - seconds % int(step.total_seconds()))


def members_among(client, subject: Subject, post_ids: Iterable[int]) -> set[int]:
    ids = sorted(set(post_ids))
    found: set[int] = set()
    for i in range(0, len(ids), IDS_PER_QUERY):  # the IN list counts against max_query_size
        found |= {pid for (pid,) in client.execute(sql("members_among"), {
            "subject_id": subject.id, "post_ids": tuple(ids[i:i + IDS_PER_QUERY])})}
    return found


def write_members(client, subject: Subject, created: dict[int, datetime]) -> None:
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
    already = members_among(client, subject, created)
    known = members_among(client, subject, {p for ps in parents.values() for p in ps}) | {subject.root_post_id}
    new: dict[int, datetime] = {}
    pending = {pid for pid in created if pid not in already and pid != subject.root_post_id}
    for pid, _, _, _, tags, _ in candidates:
        if pid in pending and tracked.intersection(tags):
            new[pid] = created[pid]
    reached = known | new.keys()  # what a post of the batch may point at to be about the subject
    changed = True
    while changed:  # within the batch: a reply to a reply both arriving now
        changed = False
        for pid in pending - new.keys():
            if not parents[pid].isdisjoint(reached):
                new[pid] = created[pid]
                reached.add(pid)
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
        unseen = {pid: at for pid, at in unseen.items() if pid not in members_among(client, subject, unseen)}
        new.update(unseen)
        frontier = unseen
    if new:
        write_members(client, subject, new)
    return new


def attribute_all(client, subject: Subject) -> dict[int, datetime]:
    """The whole attribution walk over every post (pipelines.rollups.subjects.conversation_posts); stores the
    posts about the subject that subject_posts lacks and returns them."""
    about, created = conversation_posts(client, subject)
    missing = about - members_among(client, subject, about) if about else set()
    new = {pid: created[pid] for pid in missing}
    if new:
        write_members(client, subject, new)
    return new


def empty_row(subject: Subject, grain: str, window_start: datetime) -> dict:
    row = dict.fromkeys(COUNT_COLUMNS, 0)
    row.update(subject_id=subject.id, grain=grain, window_start=window_start, posts_total=0,
               unique_viewers_sketch=b"", unique_viewers=0.0, listeners=0, peak_minute=window_start,
               unique_listeners_sketch=b"")
    return row


def conversation_into(client, subject: Subject, minutes: list[datetime], rows: dict[datetime, dict]) -> None:
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


def runs_of(minutes: list[datetime], gap: timedelta) -> list[list[datetime]]:
    runs: list[list[datetime]] = []
    for minute in minutes:
        if runs and minute - runs[-1][-1] <= gap:
            runs[-1].append(minute)
        else:
            runs.append([minute])
    return runs


def listeners_into(client, subject: Subject, minutes: list[datetime], rows: dict[datetime, dict]) -> None:
    """Concurrent listeners of the subject's Space in each minute (sessions open at any moment of
    it, as pipelines.rollups.listeners defines them) and the sketch of who they were: from the
    presence events a listener and minute at a time (not every heartbeat), LISTENER_MINUTES_PER_STEP
    minutes a read."""
    for run in runs_of(minutes, PRESENCE_RUN_GAP):
        for i in range(0, len(run), LISTENER_MINUTES_PER_STEP):
            chunk = run[i:i + LISTENER_MINUTES_PER_STEP]
            by_minute = PresenceMinutes.of_columns(client.execute(sql("listener_minutes"), {
                "space_id": subject.space_id, "from": chunk[0] - LISTENER_LOOKBACK, "to": chunk[-1] + MINUTE},
                columnar=True))
            for minute in chunk:
                ids = present(by_minute, int((minute - EPOCH) / MINUTE)).tolist()
                rows[minute]["listeners"] = len(ids)
                rows[minute]["unique_listeners_sketch"] = sketches.to_bytes(sketches.sketch_of(ids)) if ids else b""


def existing_rows(client, subject: Subject, grain: str, start: datetime, end: datetime) -> list[dict]:
    found = client.execute(sql("rollup_rows"), {"subject_id": subject.id, "grain": grain, "from": start, "to": end},
                           settings={"strings_as_bytes": True})
    return [decoded(dict(zip(ROLLUP_COLUMNS, row, strict=True))) for row in found]


def minutes_of(rows: Iterable[tuple]) -> set[datetime]:
    return {naive_utc(row[0]) for row in rows}


def decoded(row: dict) -> dict:
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
    wanted = sorted({floor_to(naive_utc(m), MINUTE) for m in minutes})
    rows = {m: empty_row(subject, "minute", m) for m in wanted}
    if wanted:
        conversation_into(client, subject, wanted, rows)
        if subject.space_id:
            listeners_into(client, subject, wanted, rows)
    if totals_from is not None:
        totals_from = floor_to(naive_utc(totals_from), MINUTE)
        for row in existing_rows(client, subject, "minute", totals_from, datetime(2100, 1, 1)):
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
    insert_subject_rows(client, rows.values())
    hours = sorted({floor_to(m, HOUR) for m in rows})
    roll_up(client, subject, "minute", "hour", hours, HOUR)
    days = sorted({floor_to(h, DAY) for h in hours})
    roll_up(client, subject, "hour", "day", days, DAY)
    return len(rows), len(hours), len(days)


def insert_subject_rows(client, rows: Iterable[dict]) -> None:
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


def roll_up(client, subject: Subject, finer: str, grain: str, windows: list[datetime], step: timedelta) -> None:
    if not windows:
        return
    parts = existing_rows(client, subject, finer, windows[0], windows[-1] + step)
    grouped: dict[datetime, list[dict]] = defaultdict(list)
    for part in parts:
        grouped[floor_to(part["window_start"], step)].append(part)
    insert_subject_rows(client, [combine(subject.id, grain, w, grouped[w]) for w in windows if grouped.get(w)])


def server_now(client) -> datetime:
    """The server's clock (naive UTC): rollup_changes.changed_at is stamped with it."""
    ((now,),) = client.execute(sql("server_now"))
    return naive_utc(now)


def minutes_of_posts(client, post_ids: Iterable[int]) -> set[datetime]:
    ids = sorted(set(post_ids))
    found: set[datetime] = set()
    for i in range(0, len(ids), IDS_PER_QUERY):
        found |= minutes_of(client.execute(sql("minutes_of_posts"), {"post_ids": tuple(ids[i:i + IDS_PER_QUERY])}))
    return found


def presence_minutes(event_minutes: Iterable[datetime]) -> set[datetime]:
    reach = int(LISTENER_REACH_AFTER / MINUTE)
    return {m + i * MINUTE for m in event_minutes for i in range(reach + 1)}
