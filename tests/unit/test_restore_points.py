"""Which checkpoint or savepoint a job resumes from, and that older ones are cleared away."""

from __future__ import annotations

import os
import shutil

import pytest

from pipelines.stream.restore_points import (
    METADATA_MAGIC,
    SAVEPOINTS,
    checkpoint_id,
    floors_dir,
    latest_checkpoint,
    prune_restore_points,
    set_aside_foreign,
    watermark_floor_ms,
)


def _restore_point(folder, mtime_s):
    folder.mkdir(parents=True)
    metadata = folder / "_metadata"
    metadata.write_bytes(b"x")
    os.utime(metadata, (mtime_s, mtime_s))
    return folder


def test_nothing_to_restore_in_an_empty_or_unfinished_folder(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "job-a" / "chk-3").mkdir(parents=True)  # a checkpoint still being written: no _metadata
    assert latest_checkpoint(tmp_path) is None


def test_the_newest_restore_point_wins_whether_checkpoint_or_savepoint(tmp_path):
    _restore_point(tmp_path / "job-a" / "chk-9", 1_000)
    savepoint = _restore_point(tmp_path / SAVEPOINTS / "savepoint-a-1", 2_000)
    assert latest_checkpoint(tmp_path) == savepoint
    newer = _restore_point(tmp_path / "job-b" / "chk-2", 3_000)  # chk-2 < chk-9, yet newer
    assert latest_checkpoint(tmp_path) == newer


def test_pruning_keeps_the_restore_point_in_use_and_nothing_older(tmp_path):
    _restore_point(tmp_path / "job-a" / "chk-9", 1_000)
    _restore_point(tmp_path / SAVEPOINTS / "savepoint-a-1", 2_000)
    keep = _restore_point(tmp_path / "job-b" / "chk-2", 3_000)
    _restore_point(tmp_path / "job-b" / "chk-1", 2_500)
    deleted = prune_restore_points(tmp_path, keep)
    assert sorted(p.name for p in deleted) == ["job-a", "savepoint-a-1"]
    assert latest_checkpoint(tmp_path) == keep
    assert (tmp_path / "job-b" / "chk-1").exists()  # the kept job's own history stays with it

    savepoint = _restore_point(tmp_path / SAVEPOINTS / "savepoint-b-2", 4_000)
    prune_restore_points(tmp_path, latest_checkpoint(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [SAVEPOINTS]
    assert latest_checkpoint(tmp_path) == savepoint


FOREIGN = ("java.lang.IllegalStateException: Failed to rollback to checkpoint/savepoint x. Cannot map "
           "checkpoint/savepoint state for operator c50f to the new program")


def test_an_upgrade_sets_a_drained_savepoint_aside_and_refuses_to_drop_a_checkpoint(tmp_path):
    _restore_point(tmp_path / "job-a" / "chk-9", 1_000)
    savepoint = _restore_point(tmp_path / SAVEPOINTS / "savepoint-a-1", 2_000)
    assert not set_aside_foreign(tmp_path, "java.net.ConnectException: Connection refused")
    assert latest_checkpoint(tmp_path) == savepoint
    # The newest point ended a drained run: set aside, and the next newest is not restored either
    # (an older checkpoint of the same run is older than its savepoint, and ends up pruned).
    assert set_aside_foreign(tmp_path, FOREIGN)
    assert not savepoint.exists() and (tmp_path / "set-aside-savepoint-a-1" / "_metadata").exists()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint == tmp_path / "job-a" / "chk-9"
    with pytest.raises(RuntimeError, match="viewcount run --bounded"):
        set_aside_foreign(tmp_path, FOREIGN)
    assert latest_checkpoint(tmp_path) == checkpoint  # a checkpoint may hold open windows: kept


def _settings(tmp_path):
    from dataclasses import replace

    from pipelines.config import Settings

    return replace(Settings.from_env(), state_dir=tmp_path)


def _metadata_header(checkpoint: int) -> bytes:
    import struct

    return struct.pack(">iiq", METADATA_MAGIC, 6, checkpoint) + b"rest of the metadata"


def test_a_restore_points_checkpoint_id_comes_from_its_name_or_its_metadata(tmp_path):
    assert checkpoint_id(tmp_path / "job-a" / "chk-17") == 17
    savepoint = tmp_path / SAVEPOINTS / "savepoint-a-1"
    savepoint.mkdir(parents=True)
    (savepoint / "_metadata").write_bytes(_metadata_header(35))
    assert checkpoint_id(savepoint) == 35
    (savepoint / "_metadata").write_bytes(b"not a flink checkpoint at all")
    with pytest.raises(ValueError, match="not a Flink checkpoint"):
        checkpoint_id(savepoint)


def test_the_floor_is_the_one_written_with_the_restore_point_the_job_starts_from(tmp_path):
    settings = _settings(tmp_path)
    checkpoints = settings.checkpoint_dir
    floors = floors_dir(checkpoints)
    floors.mkdir(parents=True)
    assert watermark_floor_ms(settings) is None  # no restore point, no ClickHouse asked
    _restore_point(checkpoints / "job-a" / "chk-4", 1_000)
    (floors / "4").write_text("1723506479999")
    (floors / "5").write_text("1723506539999")  # a checkpoint that never completed: not this one's
    assert watermark_floor_ms(settings) == 1723506479999
    (floors / "4").write_text("")  # taken before any window closed: no floor
    assert watermark_floor_ms(settings) is None
    # A restore point of an older version, without a floor: the newest window the stream wrote.
    (floors / "4").unlink()

    class Stream:
        def execute(self, query, params):
            return [(1723506420,)]

    assert watermark_floor_ms(settings) is None
    assert watermark_floor_ms(settings, Stream()) == 1723506479999
    # Pruning the restore points leaves the floors.
    prune_restore_points(checkpoints, latest_checkpoint(checkpoints))
    assert floors.is_dir()
    # No restore point: the whole input is read again, whatever the stream wrote before.
    for point in checkpoints.glob("job-*"):
        shutil.rmtree(point)
    assert watermark_floor_ms(settings, Stream()) is None
    # A drained savepoint an upgrade set aside is where the sources go on from: its floor.
    savepoint = _restore_point(checkpoints / SAVEPOINTS / "savepoint-a-1", 2_000)
    (savepoint / "_metadata").write_bytes(_metadata_header(35))
    (floors / "35").write_text("1723506539999")
    assert set_aside_foreign(checkpoints, FOREIGN)
    assert latest_checkpoint(checkpoints) is None
    assert watermark_floor_ms(settings, Stream()) == 1723506539999
