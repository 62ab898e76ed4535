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


def watermark_floor_ms(settings: Settings, timeout_s: float = FLOOR_READ_S) -> int | None:
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
    crash left open is not read (it is aborted when the job starts)."""
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
    return None if newest is None else newest + 60_000 - 1
