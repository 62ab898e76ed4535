"""The runner: the Flink job, ClickHouse's Kafka consumers and the loader, run together.

`run_pipeline(settings, bounded)` is the one way the pipeline runs (`viewcount run`, the demo,
the tests, the benchmarks). Live, it runs until SIGINT/SIGTERM. Bounded, the end is where the
source topics end when it starts: once the job has consumed up to there it is drained (every open
window fires, every sink commits, a savepoint is kept for the next run), and the run ends when
ClickHouse's consumers and the loader have loaded everything the job wrote.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines.config import Settings
from pipelines.rollups.subject_rollups import RefreshTimer
from pipelines.store import shapes
from pipelines.store.clickhouse import is_transient
from pipelines.stream import bounded_run, restore_points, rollup_job, streams
from pipelines.stream.change_feed import ChangeFeed
from pipelines.stream.loader import RETRY_FIRST_S, RETRY_MAX_S, Loader, LoaderStats

log = logging.getLogger("viewcount.runner")
# A bounded run gives up when ClickHouse's consumers commit nothing for this long after the job ended.
CLICKHOUSE_STALL_S = 180.0
# The longest the loader waits for records before the change feed and the refresh get their turn.
LOADER_WAIT_S = 0.25
# Live, the job is catching up (RefreshTimer.catching_up: after an outage, say) while its backlog
# is more than this many seconds of the events arriving; asked this often. In steady state the
# backlog saws up to a checkpoint interval's events (the offsets are committed with each checkpoint).
CATCH_UP_BEHIND_S = 30.0
BACKLOG_EVERY_S = 5.0


@dataclass
class RunReport:
    """What one run did: source records it set out to read (bounded), what the loader wrote."""

    source_records: int
    loader: LoaderStats
    seconds: float

    @property
    def dead_letters(self) -> int:
        return self.loader.dead_letters


class _JobWatch:
    """The job's end, learnt from wait() in a thread: a local mini-cluster shuts down with its job,
    so its status cannot be asked for afterwards; wait() returns when it finished and raises when
    it failed."""

    def __init__(self, result):
        self.ended = threading.Event()
        self.failure: BaseException | None = None
        threading.Thread(target=self._wait, args=(result,), name="flink-job-wait", daemon=True).start()

    def _wait(self, result) -> None:
        try:
            result.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.failure = exc
        self.ended.set()

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"the Flink job failed: {self.failure}") from self.failure


class _Progress:
    """Periodic progress lines: records left, rate, ETA (plain log lines: they read the same in a
    terminal and in CI logs)."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.first_left: int | None = None

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def report(self, what: str, left: int | None, loader: LoaderStats, refresh: RefreshTimer | None = None) -> None:
        self.last = now = time.monotonic()
        if left is not None:
            if self.first_left is None:
                self.first_left = left
            elapsed = now - self.started
            rate = (self.first_left - left) / elapsed if elapsed > 0 else 0.0
            eta = f", about {left / rate:,.0f} s left" if rate > 0 and left else ""
            what = f"{what}: {left:,} source records left ({rate:,.0f}/s{eta})"
        # What a dashboard's subject minute waits for after the watermark (docs/performance.md).
        refreshing = (f"; subject refresh: {refresh.took:.1f} s, next after {refresh.wait():.0f} s"
                      f"{' (the job is catching up)' if refresh.catching_up else ''}") if refresh else ""
        log.info("%s; loader: %s posts, %s dead letters%s", what, f"{loader.posts:,}", f"{loader.dead_letters:,}",
                 refreshing)


class _LiveBacklog:
    """Live, whether the job is catching up (after an outage, say): its sources' backlog (their ends
    now, less the job's committed offsets: a pipelines.stream.kafka.TopicEnds) is more than
    CATCH_UP_BEHIND_S of the events arriving (their rate over that long)."""

    def __init__(self, ends, clock: Callable[[], float] = time.monotonic):
        self._ends, self._clock = ends, clock
        self._arrivals: deque[tuple[float, int]] = deque()  # (when, the ends' sum), over CATCH_UP_BEHIND_S
        self.catching_up = False

    @classmethod
    def of_job(cls, settings: Settings) -> _LiveBacklog:
        from pipelines.config import EVENT_TYPES
        from pipelines.stream.job_tables import job_group_id
        from pipelines.stream.kafka import TopicEnds

        return cls(TopicEnds(settings, job_group_id(settings), [settings.topics.source(t) for t in EVENT_TYPES]))

    def update(self) -> bool:
        """Whether the job is catching up; asked of Kafka every BACKLOG_EVERY_S at most."""
        now = self._clock()
        if self._arrivals and now - self._arrivals[-1][0] < BACKLOG_EVERY_S:
            return self.catching_up
        try:
            self._ends.read_ends()
            left = self._ends.remaining()
        except Exception as exc:  # noqa: BLE001 - Kafka away: the loader and the job say so; keep the last answer
            log.debug("the job's backlog is unknown for now: %s", exc)
            return self.catching_up
        self._arrivals.append((now, sum(self._ends.ends.values())))
        while len(self._arrivals) > 2 and now - self._arrivals[1][0] >= CATCH_UP_BEHIND_S:
            self._arrivals.popleft()
        (then, first), (_, last) = self._arrivals[0], self._arrivals[-1]
        rate = (last - first) / (now - then) if now > then else 0.0
        self.catching_up = left > CATCH_UP_BEHIND_S * rate
        return self.catching_up

    def close(self) -> None:
        self._ends.close()


class _WhileClickHouseAway:
    """A step of a helper of the loader (the change feed, the subject refresh) that ClickHouse's
    absence only delays: it keeps its work, and is tried again with the loader's backoff (the loader
    itself retries its batch). The log says once that it is retrying, and when ClickHouse is back."""

    def __init__(self, what: str, client, step: Callable[[], int | bool | None]):
        """`step` returns something true when it wrote to ClickHouse (changes written, refreshed)."""
        self.what, self.client, self.step = what, client, step
        self.delay, self.next_at, self.away_since = RETRY_FIRST_S, 0.0, None

    def __call__(self) -> int | bool | None:
        """The step's result; None while ClickHouse is away (or its next try is not due)."""
        now = time.monotonic()
        if now < self.next_at:
            return None
        try:
            result = self.step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.client.disconnect()
            if self.away_since is None:
                self.away_since = now
                log.warning("%s could not reach ClickHouse (%s); retrying with backoff, up to every %.0f s",
                            self.what, exc, RETRY_MAX_S)
            self.next_at, self.delay = now + self.delay, min(self.delay * 2, RETRY_MAX_S)
            return None
        if self.away_since is not None and result:  # a step that did nothing did not reach it
            log.info("%s reached ClickHouse again after %.0f s", self.what, now - self.away_since)
            self.delay, self.away_since = RETRY_FIRST_S, None
        return result


def run_pipeline(settings: Settings, bounded: bool, report_every_s: float = 10.0) -> RunReport:
    """Run the Flink job, ClickHouse's consumers and the loader until the job ends (bounded) or a signal."""
    from pipelines.store.clickhouse import connect

    started = time.monotonic()
    stopping = threading.Event()
    if not bounded:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
    client = connect(settings)
    created = streams.ensure(client, settings)
    if created:
        log.info("ClickHouse now loads %s from Kafka itself", ", ".join(created))
    end = bounded_run.EndOfInput(settings) if bounded else None
    total = sum(end.ends.values()) if end is not None else 0
    floor = restore_points.watermark_floor_ms(settings, client)
    if floor is not None:
        log.info("the windows up to %s UTC had closed: the watermark starts there (%d)",
                 datetime.fromtimestamp((floor + 1) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"), floor)
    else:
        log.info("no window had closed: the watermark starts from the events")
    result = rollup_job.submit(settings, bounded=bounded, watermark_floor=floor)
    job = result.get_job_client()
    if end is not None:
        end.follow(job.get_job_id())
    log.info("flink job %s submitted (%s%s)", job.get_job_id(), "bounded" if bounded else "streaming",
             f", on the cluster at {settings.flink_cluster}" if settings.flink_cluster else "")
    watch = _JobWatch(result)
    loader = Loader(settings, client)
    # The subject rollups (dashboards) follow what the loaders wrote, every second; the change feed
    # tells them what ClickHouse's own consumers loaded.
    changes = ChangeFeed(settings, connect(settings))
    subject_refresh = RefreshTimer(connect(settings), shape=shapes.configured(settings))
    follow_changes = _WhileClickHouseAway("the change feed", changes.client, changes.step)
    refresh_subjects = _WhileClickHouseAway("the subject rollups' refresh", subject_refresh.client,
                                            subject_refresh.maybe)
    final_refresh = _WhileClickHouseAway("the subject rollups' last refresh", subject_refresh.client,
                                         lambda: subject_refresh.maybe(final=True))
    progress = _Progress(report_every_s)
    backlog = _LiveBacklog.of_job(settings) if end is None else None
    drained = None
    clickhouse: streams.Progress | None = None
    clickhouse_left, clickhouse_since, waiting_for = None, time.monotonic(), None
    try:
        while not stopping.is_set():
            # A short wait when idle: the change feed and the refresh run between the loader's
            # batches, and a closed minute should reach the dashboards' rollup within 15 s.
            read = loader.load_batch(max_wait_s=LOADER_WAIT_S)
            follow_changes()
            refresh_subjects()
            watch.raise_if_failed()
            left = end.remaining() if end is not None and drained is None else 0
            subject_refresh.catching_up = left > 0 if backlog is None else backlog.update()
            if end is not None and drained is None and left == 0:
                log.info("the job has consumed the topics up to their end at start; draining it")
                drained = bounded_run.drain(job, settings)
            if drained is not None and drained.done() and not watch.ended.is_set() and drained.exception():
                if "Not all required tasks are currently running" not in str(drained.exception()):
                    raise RuntimeError(f"draining the Flink job failed: {drained.exception()}")
                # Asked before every task was up (a short run on a busy machine): ask again.
                log.info("the job's tasks are not all running yet; draining again")
                drained = bounded_run.drain(job, settings)
            if bounded and watch.ended.is_set():
                if clickhouse is None:  # the job has written everything: the ends are final now
                    clickhouse = streams.Progress(settings)
                now_left = clickhouse.remaining()
                if now_left != clickhouse_left:
                    clickhouse_left, clickhouse_since = now_left, time.monotonic()
                elif time.monotonic() - clickhouse_since > CLICKHOUSE_STALL_S:
                    raise RuntimeError(
                        f"ClickHouse's Kafka consumers committed nothing for {CLICKHOUSE_STALL_S:.0f} s with "
                        f"{now_left:,} records left: see {settings.clickhouse.describe()}'s log "
                        "(.state/clickhouse/log/) and `SELECT * FROM system.tables WHERE engine = 'Kafka'`")
                # Done when everything is loaded and the subject rollups' last refresh has run; the
                # first step not done yet is named in the progress line (each asked only once those
                # before it are done: the last two write to ClickHouse).
                if now_left:
                    waiting_for = "ClickHouse's consumers"
                elif read or not loader.caught_up():
                    waiting_for = "the loader"
                elif follow_changes() != 0 or not changes.caught_up():
                    waiting_for = "the change feed"
                elif not final_refresh():
                    waiting_for = "the subject rollups' last refresh"
                else:
                    break
            if progress.due():
                if clickhouse is not None:
                    progress.report(f"ClickHouse loading the job's output: {clickhouse_left:,} records left; "
                                    f"waiting for {waiting_for}",
                                    None, loader.stats, subject_refresh)
                else:
                    progress.report("job", left if end is not None else None, loader.stats, subject_refresh)
    finally:
        if not watch.ended.is_set():
            job.cancel().result()
        for closeable in (end, backlog, clickhouse, loader, changes):
            if closeable is not None:
                closeable.close()
    return RunReport(source_records=total, loader=loader.stats, seconds=time.monotonic() - started)
