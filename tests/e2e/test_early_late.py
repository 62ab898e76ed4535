"""Early and late events against the live pipeline: a time ahead of arrival cannot close anyone's
windows, and an event archived after its window closed is counted by the ledger's repair.

An event dated up to `event_max_future_s` ahead is valid (a client's clock may run fast), but its
time moves the watermark only up to its record's Kafka time (`watermark_max_lead_s`). Before that
rule, one such event on each source partition pushed the watermark an hour ahead, and every
on-time view after it was dropped as late: archived, never counted by the stream.

The same live run, sampled from its start, shows that the job listens on loopback only.
"""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer

from tests.faults.harness import start_pipeline
from tests.sockets import listeners_until_steady, loopback
from tests.support import namespace, poll

pytestmark = pytest.mark.e2e
ON_TIME_POST, EARLY_POST, TICK_POST = 424242, 525252, 626262
SUBJECT_ROOT = 1  # config/subjects.toml: the tracked subject's root post
ON_TIME_VIEWS = 80


def _event(event_type: str, event_id: str, post_id: int, at_ms: int) -> bytes:
    event = {"event_id": event_id, "event_time": at_ms, "post_id": post_id, "author_id": 7,
             "viewer_id": zlib.crc32(event_id.encode()) % 1_000_000 + 1, "surface": "home", "client": "web"}
    if event_type == "impression":
        event["action"] = "click"
    return orjson.dumps(event)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _minute_of(at_ms: int) -> datetime:
    """The minute an epoch-milliseconds time lies in, naive UTC (as ClickHouse returns it)."""
    return datetime.fromtimestamp(at_ms // 60_000 * 60, UTC).replace(tzinfo=None)


def _run_the_repair_job(settings) -> None:
    from dagster_project.definitions import defs
    from dagster_project.resources import ClickHouseResource

    result = defs.resolve_job_def("repair_changed_hours").execute_in_process(
        resources={"clickhouse": ClickHouseResource(url=settings.clickhouse_url)})
    assert result.success


@pytest.fixture(scope="module")
def live_run(stack_settings, session_tag, tmp_path_factory):
    """A live (unbounded) run in a namespace of this module's own, its listening sockets sampled from
    its start until a checkpoint completed (every task running) and 5 s after; killed at the end.
    It reads a copy of the subjects file, to which a test adds a subject while it runs."""
    folder = tmp_path_factory.mktemp("early-late")
    with namespace(stack_settings, f"earlylate{session_tag}") as settings, pytest.MonkeyPatch.context() as patch:
        subjects_file = folder / "subjects.toml"
        subjects_file.write_text(settings.subjects_file.read_text())
        patch.setenv("VIEWCOUNT_SUBJECTS_FILE", str(subjects_file))
        run = start_pipeline(settings, folder, "live", bounded=False)
        try:
            listening = listeners_until_steady(run.process.pid, lambda: any(settings.checkpoint_dir.glob(
                "*/chk-*/_metadata")), alive=run.alive)
            yield settings, run, subjects_file, listening
        finally:
            run.kill_9()


def test_the_flink_job_listens_on_loopback_only(live_run):
    """`viewcount run` on the local mini-cluster: every socket of its whole process tree (the
    viewcount process and its JVM: py4j, blob server, REST endpoint, PyFlink) is on loopback."""
    *_, seen = live_run
    exposed = [f"{name} (pid {pid}) {address}:{port}" for (pid, port), (name, address) in seen.items()
               if not loopback(address)]
    assert exposed == [], f"the Flink job listens beyond loopback: {exposed}"
    java = [port for (_, port), (name, _) in seen.items() if name == "java"]
    python = [port for (_, port), (name, _) in seen.items() if name.startswith("python")]
    # Not vacuous: the JVM's py4j gateway, blob server and REST endpoint, the py4j callback server.
    assert len(java) >= 3 and len(python) >= 1, seen


def test_early_events_do_not_blank_the_on_time_views_and_late_ones_are_counted_by_one_repair(live_run):
    from pipelines.store.clickhouse import connect

    settings, live, subjects_file, _ = live_run
    client = connect(settings)
    poll(lambda: live.says_in_flink_log("switched from state CREATED to RUNNING"), 900, "the live job running",
         alive=live)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    counted = ("view", "impression")
    # One event dated 59 minutes ahead on every partition of both counted topics: inside the
    # accepted skew, so each is valid and archived.
    ahead = _now_ms() + 59 * 60_000
    for event_type in counted:
        for partition in range(settings.topic_partitions):
            producer.produce(settings.topics.source(event_type),
                             _event(event_type, f"early-{event_type}-{partition}", EARLY_POST, ahead),
                             partition=partition)
    assert producer.flush(30) == 0
    # Then the on-time views, dated as they are sent.
    for n in range(ON_TIME_VIEWS):
        producer.produce(settings.topics.source("view"), _event("view", f"on-time-{n}", ON_TIME_POST, _now_ms()),
                         key=str(ON_TIME_POST).encode())
    assert producer.flush(30) == 0
    ticks = iter(range(1_000_000))
    # Time goes on without waiting for the clock: a client whose clock reads just past the on-time
    # views' minute (plus the watermark delay) sends an event on every partition, its record's Kafka
    # time that same instant (the producer sets it). Watermarks follow those times, as they would
    # follow the wall clock a minute later; the early events' Kafka time still says "now".
    later_ms = (_now_ms() // 60_000 + 1) * 60_000 + (settings.watermark_delay_s + 1) * 1000

    def counted_views() -> int:
        tick = next(ticks)
        for event_type in counted:
            for partition in range(settings.topic_partitions):
                producer.produce(settings.topics.source(event_type),
                                 _event(event_type, f"tick-{event_type}-{partition}-{tick}", TICK_POST, later_ms),
                                 partition=partition, timestamp=later_ms)
        producer.flush(30)
        (views,), = client.execute("SELECT sum(views) FROM post_minute FINAL WHERE post_id = %(p)s",
                                   {"p": ON_TIME_POST})
        return views

    poll(lambda: counted_views() >= ON_TIME_VIEWS, 240, "the on-time views counted by the stream",
         interval_s=1.0, alive=live)
    (views,), = client.execute("SELECT sum(views) FROM post_minute FINAL WHERE post_id = %(p)s",
                               {"p": ON_TIME_POST})
    assert views == ON_TIME_VIEWS
    # The early events are archived now, and wait in their windows for their time.
    poll(lambda: client.execute("SELECT count() FROM events_raw WHERE post_id = %(p)s",
                                {"p": EARLY_POST})[0][0] == 2 * settings.topic_partitions,
         60, "the early events in the archive", alive=live)
    assert client.execute("SELECT count() FROM post_minute WHERE post_id = %(p)s", {"p": EARLY_POST}) == [(0,)]

    # A subject added to the file while the run is live: picked up without a restart, and
    # built from its whole history (the on-time views of its root, counted minutes ago).
    with subjects_file.open("a") as f:
        f.write(f'\n[[subject]]\nid = "added-live"\nroot_post_id = {ON_TIME_POST}\n')
    poll(lambda: client.execute(
        "SELECT sum(subject_views) FROM subject_rollup FINAL WHERE subject_id = 'added-live' "
        "AND grain = 'minute'")[0][0] == ON_TIME_VIEWS, 60, "the added subject's rollups", alive=live)

    # Late and old views of the tracked subject's root post: archived and marked late by the
    # job, noted in the ledger by the repair's scan, and counted by that one repair run.
    now_ms = _now_ms()
    late = {"late-3h": now_ms - 3 * 3_600_000, "old-30d": now_ms - 30 * 86_400_000}
    for event_id, at_ms in late.items():
        producer.produce(settings.topics.source("view"), _event("view", event_id, SUBJECT_ROOT, at_ms),
                         key=str(SUBJECT_ROOT).encode())
    assert producer.flush(30) == 0
    poll(lambda: client.execute("SELECT count() FROM events_raw WHERE post_id = %(p)s AND late = 1",
                                {"p": SUBJECT_ROOT})[0][0] == len(late), 120, "the late views archived as late",
         alive=live)
    assert client.execute("SELECT count() FROM post_minute WHERE post_id = %(p)s", {"p": SUBJECT_ROOT}) == [(0,)]
    _run_the_repair_job(settings)
    minutes = {_minute_of(at_ms) for at_ms in late.values()}
    counted = dict(client.execute("SELECT window_start, views FROM post_minute FINAL WHERE post_id = %(p)s",
                                  {"p": SUBJECT_ROOT}))
    assert counted == dict.fromkeys(minutes, 1)
    subject = dict(client.execute(
        "SELECT window_start, subject_views FROM subject_rollup FINAL WHERE subject_id = 'space-2024-08-12' "
        "AND grain = 'minute' AND subject_views > 0"))
    assert subject == dict.fromkeys(minutes, 1)
