"""Where a restarted job resumes: its newest checkpoint or savepoint, and the watermark floor.

Flink restores a job's state from a restore point on disk (`latest_checkpoint`, which
`pipelines.stream.job_environment.table_environment` restores from), but not its watermark: its
floor is read from the minutes the job's checkpoints have committed as closed (`watermark_floor_ms`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson

from pipelines.config import Settings
from pipelines.store.tables import BACKFILL_VERSION_BASE

log = logging.getLogger("viewcount.restore_points")
SAVEPOINTS = "savepoints"
# How long a start may spend reading the closed minutes (a few thousand records of 30 bytes).
FLOOR_READ_S = 30.0


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


def watermark_floor_ms(settings: Settings, client=None, timeout_s: float = FLOOR_READ_S) -> int | None:
    """The last millisecond of the newest minute the job's completed checkpoints have closed (None
    when there is none). Flink does not keep watermarks in its checkpoints: a restarted job's
    watermark starts from nothing, and an event already late before the restart (or a replayed one)
    would open its fired window again and overwrite the row with only itself in it.

    The job writes each minute it closes to the closed-minutes topic in a transaction its next
    checkpoint commits (rollup_job.build). A window fires on the watermark ahead of the checkpoint
    barrier that follows it, and every operator sees the same watermarks and barriers in the same
    order (aligned checkpoints), so the committed minutes are exactly those closed before the newest
    completed checkpoint: the windows the restored state no longer holds. The windows it still
    holds (closed later, their rows perhaps already in ClickHouse: the other sinks write at least
    once) fire again with the replayed events, to the same rows. Read committed: the transaction a
    crash left open is not read (it is aborted when the job starts).

    No closed minute at all (a job that never completed a checkpoint, or the first start after an
    upgrade from the versions whose outputs were all transactional): the newest window the stream
    wrote to post_minute, when `client` is given. Those versions' rows were all committed by
    checkpoints; a first run that crashed before its first checkpoint wrote only windows that had
    fired, all of them older than what is still to come."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

    topic = settings.topics.closed_minutes
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.topics.prefix}.{settings.job_name}.floor",  # assigned: it never joins
        "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"topic {topic} is not readable at {settings.kafka_bootstrap}: {metadata.error}: "
                               "run `make up` (it creates the topics), or check VIEWCOUNT_TOPIC_PREFIX")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
        unread, newest = set(metadata.partitions), None
        deadline = time.monotonic() + timeout_s
        while unread and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(message.error())
                unread.discard(message.partition())
                continue
            start = orjson.loads(message.value())["window_start_ms"]
            newest = start if newest is None else max(newest, start)
    finally:
        consumer.close()
    if unread:
        # A lower floor only protects less: what a late event reopens, the ledger's repair mends.
        log.warning("could not read %s to its end in %.0f s; the watermark starts from the minutes read",
                    topic, timeout_s)
    if newest is None and client is not None:
        return _newest_stream_window_ms(client)
    return None if newest is None else newest + 60_000 - 1


def _newest_stream_window_ms(client) -> int | None:
    """The last millisecond of the newest window the stream (not a rebuild) wrote to post_minute."""
    ((newest,),) = client.execute(
        "SELECT toUInt64(max(window_start)) FROM post_minute WHERE version < %(backfill)s",
        {"backfill": BACKFILL_VERSION_BASE})
    return newest * 1000 + 60_000 - 1 if newest else None
