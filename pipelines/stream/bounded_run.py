"""The end of a bounded run: the source topics' ends when it starts, and the drain once the job has read them.

A bounded run is a streaming job with an end (not `scan.bounded.mode`, see
`pipelines.stream.job_tables.source_ddl`): stopped with a savepoint after a final watermark, so
every open window fires and every sink commits. `run_to_end` is the job alone;
`pipelines.stream.runner` does the same with the loader beside it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pipelines.config import EVENT_TYPES, Settings
from pipelines.stream.job_tables import job_group_id
from pipelines.stream.restore_points import SAVEPOINTS

# The REST API's sources' positions are asked once the commits have stood still this long (they
# come with each checkpoint, and stall up to 10 s at the end: docs/performance.md), this often.
REST_AFTER_S = 3.0
REST_EVERY_S = 2.0


class EndOfInput:
    """The source topics' end offsets when a bounded run starts, and whether the job has consumed
    up to them: by what its Kafka sources have handed on (`follow`, read from Flink's REST API,
    pipelines.stream.flink_rest) or, where that is not known, by the offsets the source commits
    to the consumer group on every completed checkpoint (which lag up to 10 s behind at the end).
    Either way every event before the end is ahead of the barrier of a drain started after it.
    Clients write the source topics without transactions: a transaction's closing marker would
    sit past the last committed offset."""

    def __init__(self, settings: Settings, event_types: Iterable[str] = EVENT_TYPES):
        from pipelines.stream.kafka import TopicEnds

        self.settings = settings
        self.topics = [settings.topics.source(t) for t in event_types]  # the job's sources
        self._ends = TopicEnds(settings, job_group_id(settings), self.topics)
        self.ends = self._ends.ends
        self._positions = None
        self._committed_left, self._committed_since = None, time.monotonic()
        self._rate: float | None = None  # events a second, from the commits
        self._asked_at, self._read = float("-inf"), {}

    def follow(self, job_id: str) -> None:
        """Read the job's source positions from now on (its id, once it is submitted)."""
        from pipelines.stream.flink_rest import SourcePositions

        self._positions = SourcePositions(self.settings, str(job_id), self.topics)

    def remaining(self) -> int:
        """Events between the job's position and the ends (0: consumed up to the end). The REST
        API is asked (every REST_EVERY_S at most) only once the commits have stood still for
        REST_AFTER_S and the end may be near: no rate seen yet, or fewer events left than the
        commits' rate covers in a checkpoint interval and a little more. Its metrics cost the job's
        JVM CPU to gather, so not on every call."""
        left, now = self._ends.remaining(), time.monotonic()
        if left != self._committed_left:
            if self._committed_left is not None and left < self._committed_left:
                self._rate = (self._committed_left - left) / max(now - self._committed_since, 1e-3)
            self._committed_left, self._committed_since = left, now
        interval_s = self.settings.checkpoint_interval_ms / 1000
        near = self._rate is None or left <= self._rate * (interval_s + REST_AFTER_S)
        if not left or self._positions is None or now - self._committed_since < REST_AFTER_S or not near:
            return left
        if now - self._asked_at >= REST_EVERY_S:
            self._asked_at, self._read = now, self._positions.read()
        return self._ends.remaining(self._read)

    def close(self) -> None:
        self._ends.close()


def drain(job_client, settings: Settings):
    """Stop the job with a savepoint after a final watermark at the end of time: every open
    window fires and every sink commits, then the job finishes. Returns the future of the
    savepoint's path, which the next run restores from."""
    from pyflink.common.completable_future import CompletableFuture
    from pyflink.java_gateway import get_gateway

    target = (settings.checkpoint_dir / SAVEPOINTS).resolve()
    # PyFlink's JobClient.stop_with_savepoint still calls the Flink 1.x signature, which Flink 2
    # removed; call the Java client with the savepoint format it now requires.
    canonical = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return CompletableFuture(job_client._j_job_client.stopWithSavepoint(True, target.as_uri(), canonical), str)


def run_to_end(result, settings: Settings, end: EndOfInput, on_progress=None, poll_s: float = 1.0) -> str:
    """The job alone as a bounded run: wait until it has consumed up to `end` (calling
    on_progress(remaining) on every poll), drain it, wait for it to finish. Returns the
    savepoint's path. (`pipelines.stream.runner` does the same with the loader beside it.)"""
    job = result.get_job_client()
    end.follow(job.get_job_id())
    while remaining := end.remaining():
        if on_progress is not None:
            on_progress(remaining)
        if job.get_job_status().result().is_globally_terminal_state():
            result.wait()  # raises with the job's failure
            raise RuntimeError(f"the Flink job ended with {remaining} source records still unread")
        time.sleep(poll_s)
    savepoint = drain(job, settings).result()
    result.wait()
    return savepoint
