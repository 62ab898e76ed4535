"""Where a restarted job resumes: its newest checkpoint or savepoint, and the watermark floor.

Flink restores a job's state from a restore point on disk (`latest_checkpoint`, which
`pipelines.stream.job_environment.table_environment` restores from), but not its watermark: its
floor is read from what the stream has already written to ClickHouse (`watermark_floor_ms`).
"""

from __future__ import annotations

from pathlib import Path

from pipelines.store.tables import BACKFILL_VERSION_BASE

SAVEPOINTS = "savepoints"


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed restore point under the job's folder: a retained checkpoint
    (`<job id>/chk-<n>/_metadata`) or the savepoint a drained run ended with."""
    completed = [*checkpoint_dir.glob("*/chk-*/_metadata"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*/_metadata")]
    if not completed:
        return None
    return max(completed, key=lambda p: p.stat().st_mtime_ns).parent


def prune_restore_points(checkpoint_dir: Path, keep: Path) -> list[Path]:
    """Delete every restore point but `keep` (the one a job is starting from): the folders of
    earlier jobs' retained checkpoints and earlier savepoints. Returns what it deleted."""
    import shutil

    kept = keep if keep.parent.name == SAVEPOINTS else keep.parent
    stale = [d for d in (*checkpoint_dir.glob("*"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*"))
             if d.is_dir() and d.name != SAVEPOINTS and d != kept]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def watermark_floor_ms(client) -> int | None:
    """The last millisecond of the newest window the stream has written to post_minute (None when
    it has written none). Flink does not keep watermarks in its checkpoints: a restarted job's
    watermark starts from nothing, and an event already late before the restart (or a replayed
    one) would open its fired window again and overwrite the row with only itself in it. Every
    row in ClickHouse was committed by a completed checkpoint, whose watermark was past that
    window's end, so starting the watermark there loses no window still open in the restored state;
    what arrives for an older window is marked late and repaired (pipelines.repair.ledger)."""
    ((newest,),) = client.execute(
        "SELECT toUInt64(max(window_start)) FROM post_minute WHERE version < %(backfill)s",
        {"backfill": BACKFILL_VERSION_BASE})
    return newest * 1000 + 60_000 - 1 if newest else None
