-- The ledger of changed hours: which hours' rollups no longer match the archive, and which
-- repair covered them (pipelines/repair/ledger.py; docs/design.md, "Late events and the ledger").
--
-- events_raw.late: 1 when the job archived the event after the stream had already closed its
-- window (its time behind the job's watermark), so the stream never counted it.
-- events_raw.loaded_at: when the row reached the archive (the server's clock at the insert); the
-- ledger's scan reads only rows loaded since its last scan.
ALTER TABLE events_raw ADD COLUMN late UInt8 DEFAULT 0, ADD COLUMN loaded_at DateTime DEFAULT now()
;
-- One row per (hour, reason) each time a change is noted: a scan of the archive for late rows
-- ('late'), an erasure, a subject added. noted_at: the server's clock at the insert (its default).
CREATE TABLE IF NOT EXISTS changed_hours
(
    hour_start DateTime,
    reason String,
    rows UInt64,
    noted_at DateTime DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(noted_at)
ORDER BY (hour_start, noted_at)
;
-- A repair of an hour covers every change of that hour noted up to covered_until (the server's
-- clock when the repair began, less a second). An hour is pending while it has a change noted
-- after its last repair's covered_until.
CREATE TABLE IF NOT EXISTS hour_repairs
(
    hour_start DateTime,
    covered_until DateTime,
    repaired_at DateTime
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(repaired_at)
ORDER BY (hour_start, covered_until)
;
-- How far the archive has been scanned for late rows: the scan's start, one row per scan.
CREATE TABLE IF NOT EXISTS ledger_scans
(
    scanned_at DateTime
)
ENGINE = MergeTree
ORDER BY scanned_at
