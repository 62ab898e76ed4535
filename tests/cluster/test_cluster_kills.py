"""Kills during a run (issue 21, the proof's second half): the night on the whole cluster stack, run
by `viewcount run --bounded` on the Flink session cluster, with one TaskManager, one Kafka node and
one ClickHouse replica killed -9 while it runs, each at a moment chosen by the run's observed
progress and brought back after it has been down a while, the way an operator would
(`flink_cluster.up`, `cluster.start_kafka_nodes`, `cluster.start_clickhouse_nodes`: what
`make cluster-up` does). A dashboards API of its own (`viewcount serve`, a process) is polled the
whole time.

What it proves: the run exits 0; the stream's own rows, read through the Distributed tables the
moment the run ends (before any repair, nothing polled for), are the ground truth's; each killed
node is back and caught up (the Kafka node in every ISR, the replica holding what its twin holds,
both TaskManagers registered); and the API answered every poll, with figures never above the
night's and never going down between polls, or a 503 with Retry-After.

Not part of `make test`: `make test-cluster` runs it (docs/scale-out.md, "Kills during a run").
Its namespace (topics, databases ON CLUSTER) is its own and removed at the end; every node it
killed is started again whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pipelines import cluster
from pipelines.config import EVENT_TYPES
from pipelines.reference.generator import generate_night
from pipelines.rollups.subjects import get_subject
from pipelines.serve import figures_from_posts, figures_from_rollups, query
from pipelines.store.clickhouse import connect, connect_dashboard
from pipelines.stream import flink_cluster
from pipelines.stream.job_tables import job_group_id
from pipelines.stream.kafka import TopicEnds
from tests.expectations import assert_figures_agree, assert_post_minutes_match_truth
from tests.support import namespace, pipeline_env, poll

pytestmark = pytest.mark.cluster
SCALE = 1000
SEED = 2121
SUBJECT = "space-2024-08-12"
NIGHT = ("2024-08-12 19:47", "2024-08-12 22:47", "America/New_York")
# When each node is killed, at the earliest: the share of the night's source records the job has
# committed (its consumer group's offsets, moved by every checkpoint). One kill after the other, each
# node back before the next is killed, all during the run. The first also waits for the API's first
# figures of both endpoints, and since issue 18 the job reads faster than the subject's first
# figures come: on 7 Dec (session twelve) the job had committed 97 % of the night by then, so the
# kills landed while ClickHouse loaded and the rollups refreshed, and the run ended with the Kafka node down.
TASKMANAGER_AT, REPLICA_AT, BROKER_AT = 0.10, 0.30, 0.50
DOWN_S = 15.0  # each killed node stays down at least this long ...
MOVED_WHILE_DOWN_S = 120.0  # ... and until the run has moved on without it, within this
# Shard 2's first replica: the one its writes and reads go to (load_balancing in_order), and not the
# server the runner and the API are pointed at (VIEWCOUNT_CLICKHOUSE_URL names shard 1's first).
REPLICA = "clickhouse-s2r1"
RUN_DEADLINE_S = 1200.0
API_EVERY_S = 0.25
API_TIMEOUT_S = 10.0
# The figures the API's answers are checked on: sums of exact counts, so never above the night's
# and never lower than in an earlier answer. The subject's (its rollups, on the shard of its id),
# and the post most viewed of all those on the killed replica's shard (its post-minute rows).
SUBJECT_FIGURES = {"subject_views": "subject_views", "views_of_posts_about": "related_views",
                   "combined_views": "combined_views", "posts_about": "related_posts"}
POST_FIGURES = ("views", "impressions")
# Tables the night writes, sharded: a replica's own rows are compared with its twin's.
SHARDED = ("events_raw", "post_minute", "post_surface_minute", "posts", "space_presence", "subject_posts",
           "rollup_changes")


@dataclass
class Answer:
    """One poll of the API: when (seconds into the run), its status (None: no answer at all)."""

    at: float
    status: int | None
    retry_after: str | None = None
    figures: dict | None = None
    error: str | None = None


class ApiPoller:
    """GETs each endpoint in turn every API_EVERY_S in a thread, and keeps every answer: for each
    endpoint, a URL and the figures of its answers that are checked."""

    def __init__(self, endpoints: dict[str, tuple[str, tuple[str, ...]]], clock):
        self.endpoints, self.clock = endpoints, clock
        self.answers: dict[str, list[Answer]] = {name: [] for name in endpoints}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-poller", daemon=True)

    def start(self) -> ApiPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3 * API_TIMEOUT_S)

    def figures_from_all(self) -> bool:
        """Whether every endpoint has answered 200 once."""
        return all(any(a.status == 200 for a in list(answers)) for answers in self.answers.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, (url, fields) in self.endpoints.items():
                self.answers[name].append(self._ask(url, fields))
            self._stop.wait(API_EVERY_S)  # the polling rate, not a wait for anything

    def _ask(self, url: str, fields: tuple[str, ...]) -> Answer:
        at = self.clock()
        try:
            with urllib.request.urlopen(url, timeout=API_TIMEOUT_S) as response:
                body = json.loads(response.read())
                return Answer(at, response.status, figures={name: body.get(name) for name in fields})
        except urllib.error.HTTPError as exc:
            return Answer(at, exc.code, retry_after=exc.headers.get("Retry-After"),
                          error=exc.read().decode(errors="replace")[:300])
        except (OSError, ValueError) as exc:
            return Answer(at, None, error=repr(exc))


class Run:
    """`viewcount run --bounded --cluster <flink> --parallelism 2` as a child process (poll's `alive`)."""

    def __init__(self, settings, log: Path):
        self.log = log
        self._out = log.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "run", "--bounded", "--cluster", settings.flink_cluster,
             "--parallelism", str(settings.parallelism)],
            env=pipeline_env(settings), stdout=self._out, stderr=subprocess.STDOUT)
        self.ended: float | None = None

    def since(self) -> float:
        return time.monotonic() - self.started

    def alive(self) -> bool:
        if self.process.poll() is None:
            return True
        if self.ended is None:
            self.ended = self.since()
        return False

    def tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._out.close()


class Progress:
    """How far the run is: the share of the night's source records the job has committed, and the
    archive's rows loaded so far (through the Distributed table; a replay's repeats included)."""

    def __init__(self, settings):
        self.settings = settings
        self._ends = TopicEnds(settings, job_group_id(settings), [settings.topics.source(t) for t in EVENT_TYPES])
        self.total = sum(self._ends.ends.values())

    def share(self) -> float:
        try:
            return 1.0 - self._ends.remaining() / self.total
        except Exception:  # noqa: BLE001 - the group's coordinator moving (a broker killed): not known now
            return -1.0

    def archived(self) -> int:
        try:
            client = connect(self.settings)
            try:
                return client.execute("SELECT count() FROM events_raw")[0][0]
            finally:
                client.disconnect()
        except Exception:  # noqa: BLE001 - not known now
            return -1

    def now(self) -> tuple[float, int]:
        return self.share(), self.archived()

    def close(self) -> None:
        self._ends.close()


@dataclass
class Kill:
    """One node killed: what, and when each step happened (seconds into the run)."""

    node: str
    share: float  # of the source records the job had committed when it was killed
    killed: float
    restart_began: float = 0.0
    restarted: float = 0.0  # the restart command returned
    back: float = 0.0  # serving again: the job running on it, in every ISR, caught up
    notes: dict = field(default_factory=dict)

    def line(self) -> str:
        notes = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"kill: {self.node} at {self.killed:.1f} s ({self.share:.0%} of the source records committed), "
                f"down {self.restart_began - self.killed:.1f} s, "
                f"restart took {self.restarted - self.restart_began:.1f} s, "
                f"back {self.back - self.restart_began:.1f} s after the restart began{notes}")


def _kill_9(pid: int, what: str) -> None:
    """kill -9, then wait until it is gone (reaped if it is this process's child)."""
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    poll(gone, 10, f"{what} (pid {pid}) gone after kill -9")


def _meanwhile_false(condition):
    """condition, reading a node still starting (refused, timed out) as "not yet" (for poll)."""
    def check():
        try:
            return condition()
        except Exception:  # noqa: BLE001 - poll again
            return False
    return check


def _rest(settings, path: str):
    with urllib.request.urlopen(f"http://{settings.flink_cluster}{path}", timeout=5) as answer:
        return json.loads(answer.read())


def _job(settings) -> dict | None:
    """The run's job on the session cluster (/jobs/overview), or None before it is submitted."""
    name = f"viewcount-rollups ({settings.topics.prefix}.{settings.job_name})"
    jobs = [job for job in _rest(settings, "/jobs/overview")["jobs"] if job["name"] == name]
    return max(jobs, key=lambda job: job["start-time"]) if jobs else None


def _job_restarts(settings, job: dict) -> int:
    metrics = _rest(settings, f"/jobs/{job['jid']}/metrics?get=numRestarts")
    return int(float(metrics[0]["value"])) if metrics else 0


def _all_tasks_running(job: dict | None) -> bool:
    return job is not None and job["state"] == "RUNNING" and job["tasks"]["running"] == job["tasks"]["total"] > 0


def _in_every_isr(settings, node_id: int) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    ours = [topics[name] for name in settings.topics.all()]
    return all(node_id in partition.isrs for topic in ours for partition in topic.partitions.values())


def _local_counts(settings, node) -> dict[str, int]:
    client = connect(cluster.server_settings(settings, node))
    try:
        return {table: client.execute(f"SELECT count() FROM {table}_local")[0][0] for table in SHARDED}
    finally:
        client.disconnect()


def _replica_and_twin(settings):
    nodes = {node.name: node for node in settings.cluster.clickhouse_nodes}
    victim = nodes[REPLICA]
    return victim, next(node for node in nodes.values() if node.shard == victim.shard and node != victim)


def _most_viewed_post_of_the_replica_s_shard(settings, truth) -> tuple[int, dict[str, int]]:
    """(post id, its night's views and impressions): the most viewed post whose rows live on the
    killed replica's shard, so that the API reads that shard for it."""
    totals: dict[int, dict[str, int]] = {}
    for minute in truth.post_minutes:
        total = totals.setdefault(minute.post_id, {"views": 0, "impressions": 0})
        total["views"] += minute.views
        total["impressions"] += minute.impressions
    candidates = sorted(totals, key=lambda post: -totals[post]["views"])[:200]
    victim, _ = _replica_and_twin(settings)
    client = connect(settings)
    try:
        on_its_shard = {post for (post,) in client.execute(
            "SELECT post FROM (SELECT toUInt64(arrayJoin(%(posts)s)) AS post) "
            "WHERE modulo(cityHash64(post), %(shards)s) = %(slot)s",
            {"posts": candidates, "shards": settings.cluster.shards, "slot": victim.shard - 1})}
    finally:
        client.disconnect()
    post = next(post for post in candidates if post in on_its_shard)
    return post, totals[post]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _hold_down(kill: Kill, run: Run, progress: Progress, before: tuple[float, int]) -> None:
    """Keep the node down DOWN_S at least, and until the run has moved on without it (the job
    committed more, or ClickHouse loaded more, or the run ended)."""
    def moved() -> bool:
        share, archived = progress.now()
        return share > before[0] or archived > before[1] or not run.alive()

    poll(lambda: run.since() - kill.killed >= DOWN_S and moved(), DOWN_S + MOVED_WHILE_DOWN_S,
         f"the run moving on with {kill.node} down", interval_s=0.5)
    kill.restart_began = run.since()


def _kill_and_hold_down(service, what: str, run: Run, progress: Progress) -> Kill:
    """kill -9 a service of the cluster stack while the run goes on, and keep it down (_hold_down)."""
    before = progress.now()
    assert run.alive(), f"the run ended before {what}'s kill: the night is too small (SCALE)"
    kill = Kill(service.name, before[0], run.since())
    _kill_9(service.running_pid(), service.name)
    _hold_down(kill, run, progress, before)
    return kill


def _kill_a_taskmanager(base, settings, run: Run, progress: Progress) -> Kill:
    poll(_meanwhile_false(lambda: _all_tasks_running(_job(settings))), 300, "the job running on the session cluster",
         alive=run)
    victim = sorted(flink_cluster.taskmanager_pids(base))[0]
    assert len(flink_cluster.taskmanager_pids(base)) == base.cluster.taskmanagers
    before = progress.now()
    assert run.alive(), "the run ended before the TaskManager's kill: the night is too small (SCALE)"
    kill = Kill(f"TaskManager (pid {victim})", before[0], run.since())
    _kill_9(victim, "the TaskManager")
    # Nothing moves on without it at parallelism 2 on two one-slot TaskManagers: down DOWN_S.
    poll(lambda: run.since() - kill.killed >= DOWN_S, DOWN_S + 5, "the TaskManager down a while", alive=run)
    kill.restart_began = run.since()
    flink_cluster.up(base)  # what `make cluster-up` runs for Flink: starts the missing TaskManager
    kill.restarted = run.since()
    def restarted_and_running() -> dict | None:
        job = _job(settings)
        return job if _all_tasks_running(job) and _job_restarts(settings, job) >= 1 else None

    job = poll(_meanwhile_false(restarted_and_running), 300, "the job restarted and running on both TaskManagers again",
               alive=run)
    kill.back = run.since()
    kill.notes["job restarts"] = _job_restarts(settings, job)
    kill.notes["from kill to the job running again"] = f"{kill.back - kill.killed:.1f} s"
    return kill


def _kill_a_broker(base, settings, run: Run, progress: Progress) -> Kill:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    views = settings.topics.source("view")
    leader = poll(_meanwhile_false(lambda: admin.list_topics(views, timeout=5).topics[views].partitions[0].leader),
                  30, "the views topic's partition 0 leader")
    service = cluster.kafka_services(base)[leader]  # the busiest partition's leader
    kill = _kill_and_hold_down(service, "the Kafka node", run, progress)
    cluster.start_kafka_nodes(base)
    kill.restarted = run.since()
    poll(_meanwhile_false(lambda: _in_every_isr(settings, leader)), 180,
         f"{service.name} back in the ISR of every partition of the run's topics", interval_s=1)
    kill.back = run.since()
    return kill


def _kill_a_replica(base, settings, run: Run, progress: Progress) -> Kill:
    node = next(n for n in base.cluster.clickhouse_nodes if n.name == REPLICA)
    service = cluster.clickhouse_services(base)[node]
    kill = _kill_and_hold_down(service, "the ClickHouse replica", run, progress)
    cluster.start_clickhouse_nodes(base)
    kill.restarted = kill.back = run.since()  # up; caught up: waited for once the run has ended
    return kill


@pytest.fixture(scope="module")
def kills(cluster_stack, session_tag, timings, tmp_path_factory):
    """(settings, truth, the kills, what was read the moment the run ended, the API's answers)."""
    base = cluster.cluster_settings(cluster_stack)
    logs = tmp_path_factory.mktemp("kills")
    with namespace(base, f"ckills{session_tag}", replication_factor=base.cluster.replication_factor) as settings:
        started = time.monotonic()
        truth = generate_night(settings, scale=SCALE, seed=SEED)
        timings.append(f"kills: the night at 1:{SCALE:,}, {truth.deliveries:,} records, produced in "
                       f"{time.monotonic() - started:.1f} s")
        # The dashboard user may use this namespace's companion database once each server's users
        # are rendered for the databases that exist now: what `make cluster-up` does again.
        cluster.start_clickhouse_nodes(base)
        poll(_meanwhile_false(lambda: connect_dashboard(settings).disconnect() or True), 30,
             "the dashboard user let into the namespace's companion database")
        port = _free_port()
        api_log = (logs / "serve.log").open("wb")
        api = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--ttl", "1"],
                               env=pipeline_env(settings), stdout=api_log, stderr=subprocess.STDOUT)
        run = poller = progress = None
        try:
            local = dict(zip(("from", "to", "tz"), (NIGHT[0].replace(" ", "T"), NIGHT[1].replace(" ", "T"), NIGHT[2]),
                             strict=True))
            def api_up() -> bool:
                assert api.poll() is None, (logs / "serve.log").read_text(errors="replace")[-2000:]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/subjects", timeout=2).close()
                    return True
                except OSError:
                    return False

            poll(api_up, 60, "the dashboards API listening")
            post, post_truth = _most_viewed_post_of_the_replica_s_shard(settings, truth)
            api_url = f"http://127.0.0.1:{port}/api"
            endpoints = {"subject": (f"{api_url}/subjects/{SUBJECT}/figures?{urlencode(local)}",
                                     tuple(SUBJECT_FIGURES)),
                         "post": (f"{api_url}/posts/{post}", POST_FIGURES)}
            limits = {"subject": {name: getattr(truth, of) for name, of in SUBJECT_FIGURES.items()},
                      "post": post_truth}
            progress = Progress(settings)
            run = Run(settings, logs / "run.log")
            poller = ApiPoller(endpoints, run.since).start()
            # The first kill once the API answers figures of both endpoints: they are read throughout.
            poll(lambda: progress.share() >= TASKMANAGER_AT and poller.figures_from_all(), 600,
                 "the job's share for the TaskManager's kill and the API's first figures", alive=run, interval_s=0.5)
            done = [_kill_a_taskmanager(base, settings, run, progress)]
            poll(lambda: progress.share() >= REPLICA_AT, 600, "the job's share for the replica's kill",
                 alive=run, interval_s=0.5)
            done.append(_kill_a_replica(base, settings, run, progress))
            poll(lambda: progress.share() >= BROKER_AT, 600, "the job's share for the Kafka node's kill",
                 alive=run, interval_s=0.5)
            done.append(_kill_a_broker(base, settings, run, progress))
            poll(lambda: not run.alive(), RUN_DEADLINE_S, "the run's end", interval_s=0.5)
            ended = run.ended
            client = connect(settings)
            # Read at once, as the run left them: a poll here would hide a run that ended before its rows were in.
            subject = get_subject(SUBJECT)
            start, end = query.parse_range(*NIGHT)
            archive = "SELECT event_type, count() FROM events_raw FINAL GROUP BY event_type"
            post_minutes = "SELECT post_id, window_start, views, impressions FROM post_minute FINAL"
            at_end = {
                "archive": dict(client.execute(archive)),
                "post_minutes": client.execute(post_minutes),
                "reference": figures_from_posts.subject_figures(client, subject, start, end),
                "rolled": figures_from_rollups.subject_rollup_figures(client, subject, start, end),
                "post": dict(zip(POST_FIGURES, client.execute(
                    "SELECT sum(views), sum(impressions) FROM post_minute FINAL WHERE post_id = %(post)s",
                    {"post": post})[0], strict=True)),
                "limits": limits,
                "subject_shard": client.execute("SELECT modulo(cityHash64(%(subject)s), %(shards)s) + 1",
                                                {"subject": SUBJECT, "shards": settings.cluster.shards})[0][0],
            }
            replica = done[1]
            victim, twin = _replica_and_twin(settings)
            poll(_meanwhile_false(lambda: _local_counts(settings, victim) == _local_counts(settings, twin)), 180,
                 f"{REPLICA} holding what {twin.name} holds", interval_s=1)
            replica.notes["caught up with its twin"] = f"{run.since() - replica.restart_began:.1f} s after its restart"
            timings.append(f"kills: `viewcount run --bounded` with the three kills took {ended:.1f} s "
                           f"(exit {run.process.returncode})")
            timings.extend(kill.line() for kill in done)
            try:
                yield settings, truth, done, at_end, poller, run, client
            finally:
                client.disconnect()
        finally:
            if poller is not None:
                poller.stop()
            if run is not None:
                run.stop()
            if progress is not None:
                progress.close()
            api.terminate()
            api.wait(30)
            api_log.close()
            # Whatever happened, every node runs again for what comes after (idempotent: what runs is left alone).
            cluster.start_kafka_nodes(base)
            cluster.start_clickhouse_nodes(base)
            flink_cluster.up(base)


def test_the_run_finishes_with_every_kill_made_while_it_ran(kills):
    _, _, done, _, _, run, _ = kills
    assert run.process.returncode == 0, run.tail()
    assert [kill.node.split(" ")[0] for kill in done] == ["TaskManager", REPLICA, done[2].node]
    assert done[2].node.startswith("kafka-")
    for kill in done:
        # Killed while the run went on. Its restart may come after the run's end: a run that finished
        # without the node (the job's reading done, ClickHouse loading on the other servers) is a run
        # that finished with the node down, and the node must still rejoin and catch up (the tests below).
        assert 0 < kill.killed < run.ended and kill.killed < kill.restart_began, kill.line()
        assert kill.restart_began - kill.killed >= DOWN_S, kill.line()
    assert done[0].notes["job restarts"] >= 1, "the TaskManager's kill did not make the job restart"


def test_the_archive_holds_every_event_once_when_the_run_ends(kills):
    _, truth, _, at_end, _, _, _ = kills
    assert at_end["archive"] == {"view": truth.views, "impression": truth.impressions}


def test_every_post_minute_equals_the_ground_truth_when_the_run_ends(kills):
    """Read through the Distributed tables with FINAL the moment the run ended, before any repair:
    every on-time post-minute exact, those with late events within their bounds."""
    _, truth, _, at_end, _, _, _ = kills

    class AsRead:  # what assert_post_minutes_match_truth asks of a client: the rows as read at the end
        @staticmethod
        def execute(_query):
            return at_end["post_minutes"]

    assert_post_minutes_match_truth(AsRead, truth)


def test_the_subject_rollups_agree_with_the_post_minutes_when_the_run_ends(kills):
    _, _, _, at_end, _, _, _ = kills
    assert_figures_agree(at_end["reference"], at_end["rolled"])


def test_the_killed_kafka_node_is_in_every_isr(kills):
    settings, _, done, _, _, _, _ = kills
    node_id = int(done[2].node.rsplit("-", 1)[1])
    assert _in_every_isr(settings, node_id)


def test_the_killed_replica_holds_what_its_twin_holds(kills):
    settings, _, _, _, _, _, _ = kills
    victim, twin = _replica_and_twin(settings)
    counts = _local_counts(settings, victim)
    assert counts == _local_counts(settings, twin)
    assert all(counts[table] > 0 for table in ("events_raw", "post_minute", "post_surface_minute")), counts


def test_both_taskmanagers_run_and_are_registered(kills):
    settings, _, _, _, _, _, _ = kills
    assert len(flink_cluster.taskmanager_pids(settings)) == settings.cluster.taskmanagers
    assert flink_cluster.unregistered_taskmanagers(settings) == []
    # The killed one is dropped once the JobManager has missed its heartbeats.
    poll(lambda: (flink_cluster.overview(settings) or {}).get("taskmanagers") == settings.cluster.taskmanagers, 120,
         "the JobManager listing exactly the running TaskManagers")


def test_the_dashboards_api_answered_throughout_and_never_a_wrong_figure(kills, timings):
    """Every poll of each endpoint answered: 200 with figures never above the night's and never
    below an earlier answer's, or 503 with Retry-After; 404 (no rows yet) only before its first
    figures. Figures came from both while each node was down."""
    _, _, done, at_end, poller, _, _ = kills
    for endpoint, limits in at_end["limits"].items():
        answers = list(poller.answers[endpoint])
        first = next(i for i, a in enumerate(answers) if a.status == 200)
        assert all(a.status in (404, 503) for a in answers[:first]), (endpoint, answers[:first])
        unanswered = [a for a in answers if a.status is None]
        assert unanswered == [], f"{endpoint}: {len(unanswered)} polls got no answer, e.g. {unanswered[:3]}"
        others = [a for a in answers[first:] if a.status != 200]
        assert all(a.status == 503 and a.retry_after and int(a.retry_after) > 0 for a in others), others[:5]
        previous = None
        for answer in answers[first:]:
            if answer.status != 200:
                continue
            for name, limit in limits.items():
                assert answer.figures[name] <= limit, (endpoint, answer, name, limit)
                if previous is not None:
                    assert answer.figures[name] >= previous.figures[name], (endpoint, previous, answer, name)
            previous = answer
        for kill in done:
            down = [a for a in answers if kill.killed <= a.at < kill.restart_began]
            assert any(a.status == 200 for a in down), f"{endpoint}: no figures while {kill.node} was down"
        statuses = {s: sum(1 for a in answers if a.status == s) for s in sorted({a.status for a in answers}, key=str)}
        timings.append(f"kills: the API's {endpoint} polled {len(answers)} times over {answers[-1].at:.0f} s: "
                       f"{statuses}, the first figures at {answers[first].at:.1f} s")
    # The last answers are the run's last figures (the API's cache lives one second).
    final = {"subject": {name: getattr(at_end["rolled"], name) for name in SUBJECT_FIGURES}, "post": at_end["post"]}
    for endpoint, figures in final.items():
        poll(lambda endpoint=endpoint, figures=figures: (last := poller.answers[endpoint][-1]).status == 200
             and last.figures == figures, 30, f"the API's {endpoint} answering the run's last figures")
    timings.append(f"kills: the subject's rollups live on shard {at_end['subject_shard']}")
