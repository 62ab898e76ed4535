"""The ledger of changed hours: which hours' rollups no longer match the archive, and their repair.

The stream counts an event only while its window is open. An event archived after that (late,
older than the watermark, a replay) is marked `late` by the job and loaded into events_raw with the
time it arrived (`loaded_at`). `note_late_hours` scans the archive for late rows loaded since its
last scan and notes their hours in `changed_hours`; anything else that changes an hour's sources
(an erasure, a subject added) notes its hours with `note_hours`. `repair` rebuilds exactly the
pending hours, the post rollups (pipelines.repair.backfill) and every subject's rollups together,
and records what each repair covered in `hour_repairs`.

Why a noted change is never lost: a change is noted after the rows behind it are readable, and
its noted_at is the server's clock when the note was inserted. A repair records as covered only
the changes noted COMMIT_GRACE before it read the ledger (an insert under way at that moment has
an earlier noted_at than its commit), and rebuilds from what is readable after that read. A change
noted inside the grace is repaired now and again by the next run: a repeat changes nothing. The
archive is scanned again from SCAN_OVERLAP before the last scan, for late rows whose insert was
still under way when it ran; their hours are repaired once more, which also changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipelines.config import REPO_ROOT, Settings
from pipelines.repair import backfill, retention, subject_repair
from pipelines.rollups import subject_rows
from pipelines.rollups.subjects import Subject, load_subjects
from pipelines.store.clickhouse import insert_rows
from pipelines.store.shapes import ClusterShape
from pipelines.store.tables import CHANGED_HOURS, HOUR_REPAIRS, LEDGER_SCANS, TABLE_COLUMNS

log = logging.getLogger("viewcount.ledger")
SQL_DIR = REPO_ROOT / "sql" / "ledger"
SCAN_OVERLAP = timedelta(minutes=10)
COMMIT_GRACE = timedelta(seconds=5)
NOTE_COLUMNS = ("hour_start", "reason", "rows")  # noted_at: the server's clock at the insert (its default)
EPOCH = datetime(1970, 1, 1)
LATE = "late"


def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def note_hours(client, hours: Iterable[datetime], reason: str, rows: int = 0) -> list[datetime]:
    """Record that these hours changed (their start, UTC, naive or aware), for `reason`."""
    noted = sorted({backfill.hour_of(backfill.as_utc(h)).replace(tzinfo=None) for h in hours})
    insert_rows(client, CHANGED_HOURS, NOTE_COLUMNS, [(h, reason, rows) for h in noted])
    return noted


def note_late_hours(client) -> dict[datetime, int]:
    """Note the hours of the late rows loaded into the archive since the last scan (with
    SCAN_OVERLAP); returns {hour: late rows seen}."""
    scanned_at = subject_rows.server_now(client)
    ((last,),) = client.execute(_sql("last_scan"))
    since = max(subject_rows.naive_utc(last) - SCAN_OVERLAP, EPOCH) if last else EPOCH
    found = {subject_rows.naive_utc(h): n for h, n in client.execute(_sql("late_hours"), {"since": since})}
    if found:
        insert_rows(client, CHANGED_HOURS, NOTE_COLUMNS, [(h, LATE, n) for h, n in sorted(found.items())])
    insert_rows(client, LEDGER_SCANS, TABLE_COLUMNS[LEDGER_SCANS], [(scanned_at,)])
    return found


def _wait_for_server_clock(client, moment: datetime, timeout_s: float = 30.0) -> None:
    """Poll the server's clock (second resolution) until it reads `moment`."""
    deadline = time.monotonic() + timeout_s
    while subject_rows.server_now(client) < moment:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ClickHouse's clock did not reach {moment} within {timeout_s:.0f} s")
        time.sleep(0.2)


def pending_hours(client) -> list[datetime]:
    """Hours with a change noted after their last repair covered them, oldest first."""
    return [subject_rows.naive_utc(h) for (h,) in client.execute(_sql("pending_hours"))]


@dataclass
class RepairReport:
    late_rows: dict[datetime, int] = field(default_factory=dict)  # hour -> late rows noted by this run's scan
    hours: list[datetime] = field(default_factory=list)  # the hours repaired
    # Hours older than the raw retention: their archive was dropped, so a rebuild would empty them.
    # Not rebuilt; recorded as covered so that they are not pending for ever.
    expired: list[datetime] = field(default_factory=list)
    views: int = 0
    impressions: int = 0
    subject_minute_rows: int = 0


def repair(client, subjects: dict[str, Subject] | None = None, scan: bool = True,
           retention_days: int | None = None, shape: ClusterShape | None = None) -> RepairReport:
    """Note late rows (scan), then rebuild every pending hour: its post rollups from the archive,
    then each tracked subject's rollups from those; record each repair. An hour that ended before
    the raw retention's cutoff (retention_days, default the settings') is skipped with a warning:
    its raw rows were dropped, and its rollups are all that is left of it.

    On a ClickHouse cluster (`shape`) the post rollups are rebuilt shard by shard
    (`backfill.rebuild_hour`); the ledger and the subject rollups are read and written through the
    Distributed tables, as the stream's writers do. A rebuild that fails leaves its hour pending."""
    if retention_days is None:
        retention_days = Settings.from_env().raw_retention_days
    report = RepairReport(late_rows=note_late_hours(client) if scan else {})
    # Let the newest note (this run's scan, an erasure a moment ago) fall outside the grace, so
    # that this run covers it: at most COMMIT_GRACE of waiting, none when it is older.
    ((latest,),) = client.execute(_sql("latest_note"))
    _wait_for_server_clock(client, subject_rows.naive_utc(latest) + COMMIT_GRACE)
    covered_until = subject_rows.server_now(client) - COMMIT_GRACE
    oldest = retention.cutoff(retention_days, backfill.as_utc(subject_rows.server_now(client)))
    for hour in pending_hours(client):
        if oldest is not None and backfill.as_utc(hour) + timedelta(hours=1) <= oldest:
            report.expired.append(hour)
        else:
            report.hours.append(hour)
    for hour in report.expired:
        log.warning("not repairing %s UTC: it is older than the raw retention (%d days, raw rows before %s "
                    "are dropped), so a rebuild would empty its rollups; they stay as they are",
                    f"{hour:%Y-%m-%d %H:00}", retention_days, f"{oldest:%Y-%m-%d %H:%M}")
        insert_rows(client, HOUR_REPAIRS, TABLE_COLUMNS[HOUR_REPAIRS],
                    [(hour, covered_until, subject_rows.server_now(client))])
    subjects = load_subjects() if subjects is None else subjects
    for hour in report.hours:
        hour_aware = backfill.as_utc(hour)
        built = backfill.rebuild_hour(client, hour_aware, shape=shape)
        report.views += built.views
        report.impressions += built.impressions
        for subject in subjects.values():
            report.subject_minute_rows += subject_repair.rebuild_hour(client, subject, hour_aware)
        insert_rows(client, HOUR_REPAIRS, TABLE_COLUMNS[HOUR_REPAIRS],
                    [(hour, covered_until, subject_rows.server_now(client))])
        log.info("repaired %s UTC: %d views, %d impressions", f"{hour:%Y-%m-%d %H:00}", built.views,
                 built.impressions)
    return report
