"""Rebuild an hour of rollups from the archive (events_raw) and swap it in atomically.

The rebuild counts exactly what the archive holds, late events included, with the same sketch
module as the stream, writes the whole hour into a staging table and replaces the hour's
partition with it (`ALTER TABLE ... REPLACE PARTITION`): readers see the old hour or the new
one, never a mix, and running it twice gives the same rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipelines import sketches
from pipelines.clickhouse import POST_MINUTE
from pipelines.config import REPO_ROOT
from pipelines.loader import POST_MINUTE_COLUMNS

SQL_DIR = REPO_ROOT / "sql" / "backfill"
STAGING = "post_minute_staging"
# Backfilled rows outrank every stream row (whose version is a Kafka offset).
BACKFILL_VERSION_BASE = 1 << 62


@dataclass(frozen=True)
class HourReport:
    hour_start: datetime
    rows: int
    views: int
    impressions: int
    seconds: float


def partition_id(hour_start: datetime) -> int:
    """The hour's partition value, as the tables' PARTITION BY computes it (2024081223)."""
    return int(hour_start.astimezone(UTC).strftime("%Y%m%d%H"))


def rows_for_hour(client, hour_start: datetime, version: int) -> list[tuple]:
    """post_minute rows of the hour from events_raw, streamed in blocks (bounded memory)."""
    hour_start = hour_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    rows: list[tuple] = []
    key, views, impressions, viewers = None, 0, 0, []

    def flush():
        if key is not None:
            sketch = sketches.sketch_of(viewers)
            rows.append((key[0], key[1], views, impressions, sketches.to_bytes(sketch), sketch.get_estimate(), version))

    for post_id, window_start, event_type, viewer_id in client.execute_iter(
        (SQL_DIR / "hour_events.sql").read_text(),
        {"from": hour_start, "to": hour_start + timedelta(hours=1)},
        settings={"max_block_size": 65_536},
    ):
        if (post_id, window_start) != key:
            flush()
            key, views, impressions, viewers = (post_id, window_start), 0, 0, []
        if event_type == "view":
            views += 1
            viewers.append(viewer_id)
        else:
            impressions += 1
    flush()
    return rows


def rebuild_hour(client, hour_start: datetime) -> HourReport:
    started = time.monotonic()
    version = BACKFILL_VERSION_BASE + int(time.time())
    rows = rows_for_hour(client, hour_start, version)
    client.execute((SQL_DIR / "create_staging.sql").read_text())
    client.execute(f"TRUNCATE TABLE {STAGING}")
    if rows:
        client.execute(f"INSERT INTO {STAGING} ({', '.join(POST_MINUTE_COLUMNS)}) VALUES", rows)
    # The staging table holds the whole hour: REPLACE PARTITION swaps it in as one unit
    # (an hour the archive has nothing for becomes empty, as it should).
    client.execute(f"ALTER TABLE {POST_MINUTE} REPLACE PARTITION {partition_id(hour_start)} FROM {STAGING}")
    client.execute(f"TRUNCATE TABLE {STAGING}")
    return HourReport(hour_start, len(rows), sum(r[2] for r in rows), sum(r[3] for r in rows),
                      time.monotonic() - started)


def hours_with_events(client) -> list[datetime]:
    return [h.replace(tzinfo=UTC) for (h,) in client.execute(
        "SELECT DISTINCT toStartOfHour(event_time) AS h FROM events_raw ORDER BY h")]

