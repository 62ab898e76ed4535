"""Where a restarted job resumes: its newest checkpoint or savepoint, and the watermark floor.

Flink restores a job's state from a restore point on disk (`latest_checkpoint`, which
`pipelines.stream.job_environment.table_environment` restores from), but not its watermark: its
floor is written by the job with each checkpoint (`watermark_floor_ms`).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from pipelines.config import Settings
from pipelines.store.tables import BACKFILL_VERSION_BASE

log = logging.getLogger("viewcount.restore_points")
SAVEPOINTS = "savepoints"
FLOORS = "floors"  # the watermark floor of each checkpoint, beside the checkpoints
METADATA_MAGIC = 0x4960672D  # the first four bytes of a checkpoint's _metadata


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed restore point under the job's folder: a retained checkpoint
    (`<job id>/chk-<n>/_metadata`) or the savepoint a drained run ended with."""
    return _newest(*checkpoint_dir.glob("*/chk-*/_metadata"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*/_metadata"))


def _newest(*metadata_files: Path) -> Path | None:
    """The folder of the newest of these `_metadata` files (None when there is none)."""
    completed = {}
    for metadata in metadata_files:
        try:
            completed[metadata.parent] = metadata.stat().st_mtime_ns
        except FileNotFoundError:  # a running job's older checkpoint, subsumed and deleted meanwhile
            continue
    return max(completed, key=completed.__getitem__) if completed else None


def prune_restore_points(checkpoint_dir: Path, keep: Path) -> list[Path]:
    """Delete every restore point but `keep` (the one a job is starting from): the folders of
    earlier jobs' retained checkpoints and earlier savepoints. Returns what it deleted."""
    import shutil

    kept = keep if keep.parent.name == SAVEPOINTS else keep.parent
    stale = [d for d in (*checkpoint_dir.glob("*"), *checkpoint_dir.glob(f"{SAVEPOINTS}/*"))
             if d.is_dir() and d.name not in (SAVEPOINTS, FLOORS) and d != kept]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


# Flink's words when a restore point holds state for an operator the job being started does not have.
FOREIGN_STATE = "Cannot map checkpoint/savepoint state"
ASIDE_PREFIX = "set-aside-"


def set_aside_foreign(checkpoint_dir: Path, failure: str) -> bool:
    """After a start failed with `failure`: when it failed because the newest restore point is of a
    job of another shape (an upgrade changed its operators) and that point is a savepoint, move it
    out of the way and return True (start again without it). A savepoint here ended a drained
    bounded run: every window had fired and every output was written, and the sources' offsets are
    committed in Kafka too, so nothing but the restore point is lost. A checkpoint may hold open
    windows: refused, with what to do. Anything else: False (the failure stands)."""
    point = latest_checkpoint(checkpoint_dir)
    if FOREIGN_STATE not in failure or point is None:
        return False
    if point.parent.name != SAVEPOINTS:
        raise RuntimeError(
            f"the job's newest checkpoint {point} holds state this version of the job has no place for (its "
            "operators changed: an upgrade?), and a checkpoint may hold windows still open, so it is not dropped. "
            "Run the version that wrote it again and end it with `viewcount run --bounded` (its drained savepoint "
            f"is set aside by the next version by itself), or move {point.parent} out of {checkpoint_dir} to start "
            "without it and rebuild the hours it held (the Dagster job repair_changed_hours, or a backfill)")
    aside = checkpoint_dir / f"{ASIDE_PREFIX}{point.name}"
    point.rename(aside)
    log.warning("the savepoint %s is of a job of another shape (an upgrade changed its operators); it ended a "
                "drained run, so the job starts without it (the sources go on from their committed offsets); "
                "moved to %s, removed at the next start", point, aside)
    return True


def checkpoint_id(point: Path) -> int:
    """A restore point's checkpoint id: n of a retained `chk-<n>`; a savepoint's from its _metadata,
    whose header is Flink's magic number, the format's version, then the id (big-endian)."""
    if point.name.startswith("chk-"):
        return int(point.name.removeprefix("chk-"))
    with (point / "_metadata").open("rb") as metadata:
        magic, _version, checkpoint = struct.unpack(">iiq", metadata.read(16))
    if magic != METADATA_MAGIC:
        raise ValueError(f"{point / '_metadata'} is not a Flink checkpoint's metadata (magic {magic:#x})")
    return checkpoint


def floors_dir(checkpoint_dir: Path) -> Path:
    """Where the job writes the watermark floor of each checkpoint it takes (jvm/: WatermarkFloorSink)."""
    return checkpoint_dir / FLOORS


def floor_file(checkpoint_dir: Path, point: Path) -> Path:
    """The file the job wrote the watermark floor of restore point `point` to."""
    return floors_dir(checkpoint_dir) / str(checkpoint_id(point))


def watermark_floor_ms(settings: Settings, client=None) -> int | None:
    """Where the watermark stood at the restore point the job starts from: every window ending at or
    before it had fired (None when none had). Flink does not keep watermarks in its checkpoints: a
    restarted job's watermark starts from nothing, and an event already late before the restart (or
    a replayed one) would open its fired window again and overwrite the row with only itself in it.

    The job writes this floor itself as it takes each checkpoint, before the checkpoint can complete
    (jvm/: WatermarkFloorSink): the watermark every window had at that checkpoint's barrier, so
    exactly the windows the restored state no longer holds are below it. The windows it still holds
    (closed later, their rows perhaps already in ClickHouse: the sinks write at least once) fire
    again with the replayed events.

    No restore point: no floor. The sources start from offsets no checkpoint committed (the
    earliest), the whole input is read again and every window fires anew: a run killed before its
    first checkpoint has written rows (at least once), perhaps only part of a minute's, which a
    floor taken from ClickHouse would declare closed. A drained savepoint of another job shape set
    aside by an upgrade (`set_aside_foreign`) still counts as the point the sources go on from.
    A restore point without a floor (written by a version before the floors, whose outputs were
    all transactional, so every row in ClickHouse came from a completed checkpoint): the newest
    window the stream wrote to post_minute, when `client` is given."""
    point = latest_checkpoint(settings.checkpoint_dir) or _set_aside(settings.checkpoint_dir)
    if point is None:
        return None
    written = floor_file(settings.checkpoint_dir, point)
    if written.exists():
        text = written.read_text(encoding="ascii").strip()
        return int(text) if text else None
    log.warning("the restore point %s has no watermark floor (no %s: written by an older version?); the "
                "watermark starts after the newest window in post_minute", point, written)
    return _newest_stream_window_ms(client) if client is not None else None


def _set_aside(checkpoint_dir: Path) -> Path | None:
    """The newest savepoint `set_aside_foreign` moved out of the way (removed at the next restore)."""
    return _newest(*checkpoint_dir.glob(f"{ASIDE_PREFIX}*/_metadata"))


def _newest_stream_window_ms(client) -> int | None:
    """The last millisecond of the newest window the stream (not a rebuild) wrote to post_minute."""
    ((newest,),) = client.execute(
        "SELECT toUInt64(max(window_start)) FROM post_minute WHERE version < %(backfill)s",
        {"backfill": BACKFILL_VERSION_BASE})
    return newest * 1000 + 60_000 - 1 if newest else None
