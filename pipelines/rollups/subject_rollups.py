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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipelines.rollups.subject_rows import (
    EPOCH,
    MINUTE,
    attribute_all,
    attribute_new_posts,
    floor_to,
    minutes_of,
    minutes_of_posts,
    naive_utc,
    new_version,
    presence_minutes,
    server_now,
    sql,
    write_minutes,
)
from pipelines.rollups.subjects import Subject, load_subjects
from pipelines.store import shards
from pipelines.store.clickhouse import SUBJECT_REFRESH_STATE, insert_rows
from pipelines.store.shapes import ClusterShape
from pipelines.store.tables import ROLLUP_CHANGES, TABLE_COLUMNS

log = logging.getLogger("viewcount.subject_rollups")


# Changes are re-read from this far before the last read position: an insert stamped with the
# server clock at its start can become visible a little after a refresh read past that stamp.
# Re-reading costs a little work, never a wrong row (every row is recomputed, not added to).
CHANGES_OVERLAP = timedelta(seconds=30)


# How often the pipeline refreshes while it runs: a closed minute is in the rollups within the
# stream's watermark + the loader's batch + this + one refresh (goal: 15 s).
REFRESH_INTERVAL_S = 1.0
# The most of the runner's time the refreshes may take (RefreshTimer): beyond, they come less often.
REFRESH_SHARE = 0.2
# The same while the job is catching up on a backlog (a bounded run before the job has read to its
# end; live, a backlog of more than pipelines.stream.runner.CATCH_UP_BEHIND_S, after an outage):
# its minutes are already late, and the refreshes' Python (they run in the runner's one thread) and
# ClickHouse reads compete with the job for the box's cores. The last refresh still writes every
# minute. (docs/performance.md, "Cut 6".)
CATCH_UP_REFRESH_SHARE = 0.05


# The change log keeps this much before the oldest subject's read position; pruned this often.
CHANGES_KEPT = timedelta(days=2)


PRUNE_INTERVAL_S = 3600.0


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


def _read_to(client, subject: Subject) -> datetime | None:
    found = client.execute(sql("read_state"), {"subject_id": subject.id})
    return naive_utc(found[0][0]) if found else None


def _record_read_to(client, subject: Subject, read_to: datetime) -> None:
    insert_rows(client, SUBJECT_REFRESH_STATE, TABLE_COLUMNS[SUBJECT_REFRESH_STATE],
                [(subject.id, read_to, server_now(client), new_version())])


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
        dirty = minutes_of(client.execute(sql("changed_minutes"), {
            "since": since, "subject_id": subject.id, "root_post_id": subject.root_post_id}))
        if subject.space_id:
            dirty |= presence_minutes(minutes_of(client.execute(
                sql("changed_presence"), {"since": since, "space_id": subject.space_id})))
        if new:
            dirty |= minutes_of_posts(client, new) | {floor_to(at, MINUTE) for at in new.values()}
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


def prune_changes(client, reports: Iterable[RefreshReport], shape: ClusterShape | None = None) -> list[str]:
    """Drop the day partitions of rollup_changes every tracked subject has read past, keeping
    CHANGES_KEPT before the oldest read position (18.16 has no TTL). Returns the dropped days.
    On a cluster: from each shard's `_local` table, on the replica leading it (shards.drop_partitions);
    a shard with no such replica now keeps its days until a later prune."""
    read_to = [r.read_to for r in reports if r.read_to is not None]
    if not read_to:
        return []
    keep_from = int((min(read_to) - CHANGES_KEPT).strftime("%Y%m%d"))
    try:
        dropped = shards.drop_partitions(client, ROLLUP_CHANGES, shape, lambda day: int(day) < keep_from)
    except shards.ShardUnavailable as exc:
        log.warning("the change log was not pruned this time: %s", exc)
        return []
    return sorted({day for _, days in dropped for day in days})


class RefreshTimer:
    """Calls refresh at most every interval_s (the loader's batches come faster than that), and
    prunes the change log every PRUNE_INTERVAL_S.

    A refresh that took long waits proportionally longer for the next one (the refresh may take at
    most `share` of the runner's time): live, a refresh takes milliseconds and comes every second;
    catching up, every refresh finds many minutes changed, and refreshing them less often writes
    each minute fewer times over (the profile of a 1:400 catch-up had three quarters of the
    runner's CPU in refreshes every second)."""

    def __init__(self, client, interval_s: float = REFRESH_INTERVAL_S, share: float = REFRESH_SHARE,
                 clock=time.monotonic, shape: ClusterShape | None = None,
                 catch_up_share: float = CATCH_UP_REFRESH_SHARE):
        self.client, self.interval_s, self.share, self.clock = client, interval_s, share, clock
        self.catch_up_share = catch_up_share
        self.catching_up = False  # set by the runner while the job reads a backlog
        self.shape = shape  # the ClickHouse cluster's, if any: where the change log's days are dropped
        self.last = self.took = 0.0
        self.last_pruned = clock()
        self.reports: list[RefreshReport] = []

    def wait(self) -> float:
        """Seconds from the end of a refresh to the next."""
        share = self.catch_up_share if self.catching_up else self.share
        return max(self.interval_s, self.took * (1 / share - 1))

    def due(self) -> bool:
        return self.clock() - self.last >= self.wait()

    def maybe(self, final: bool = False) -> bool:
        """Refresh if due (or `final`); True if it refreshed."""
        if not final and not self.due():
            return False
        started = self.clock()
        self.reports = refresh(self.client)
        self.last = self.clock()  # the wait runs from the end of a refresh
        self.took = self.last - started
        if self.clock() - self.last_pruned >= PRUNE_INTERVAL_S:
            self.last_pruned = self.clock()
            if dropped := prune_changes(self.client, self.reports, self.shape):
                log.info("dropped the change log's days %s: every subject has read past them", ", ".join(dropped))
        return True


def build_subject(client, subject: Subject) -> RefreshReport:
    """Every row of the subject from scratch: attribution over all posts, then every minute with
    views of the conversation, posts created or listeners."""
    started = time.monotonic()
    new = attribute_all(client, subject)
    minutes = minutes_of(client.execute(sql("conversation_minutes"), {
        "subject_id": subject.id, "root_post_id": subject.root_post_id}))
    minutes |= minutes_of(client.execute(sql("posts_created"), {"subject_id": subject.id, "from": EPOCH}))
    if subject.space_id:
        minutes |= presence_minutes(minutes_of(client.execute(sql("presence_minutes"),
                                                             {"space_id": subject.space_id})))
    written = write_minutes(client, subject, minutes, totals_from=min(minutes) if minutes else None)
    return RefreshReport(subject.id, full=True, new_posts=len(new), minutes=written[0], hours=written[1],
                         days=written[2], seconds=time.monotonic() - started)
