"""The Flink session cluster's start (pipelines/stream/flink_cluster.py) counts what is missing in
processes, not in what the JobManager lists: a TaskManager killed -9 stays listed until its
heartbeats are missed, and must be started again at once."""

from __future__ import annotations

import os
import socket

from pipelines.config import Settings
from pipelines.stack.services import listeners_by_pid
from pipelines.stream import flink_cluster


def test_a_killed_taskmanager_the_jobmanager_still_lists_is_started_again(monkeypatch):
    settings = Settings.from_env()
    alive = [101]  # one of two TaskManagers left; the JobManager still lists both
    started: list[str] = []

    def script(_settings, name, *args):
        started.append(name)
        alive.append(102)

    monkeypatch.setattr(flink_cluster, "overview", lambda *_a, **_k: {"taskmanagers": 2, "slots-total": 2})
    monkeypatch.setattr(flink_cluster, "taskmanager_pids", lambda _s: list(alive))
    monkeypatch.setattr(flink_cluster, "unregistered_taskmanagers", lambda _s: [])
    monkeypatch.setattr(flink_cluster, "_script", script)
    flink_cluster.up(settings, taskmanagers=2, timeout_s=1)
    assert started == ["taskmanager.sh"]
    flink_cluster.up(settings, taskmanagers=2, timeout_s=1)
    assert started == ["taskmanager.sh"], "both running: nothing more started"


def test_up_waits_until_every_running_taskmanager_is_registered(monkeypatch):
    settings = Settings.from_env()
    unregistered = [[102], [102], []]
    monkeypatch.setattr(flink_cluster, "overview", lambda *_a, **_k: {"taskmanagers": 2, "slots-total": 2})
    monkeypatch.setattr(flink_cluster, "taskmanager_pids", lambda _s: [101, 102])
    monkeypatch.setattr(flink_cluster, "unregistered_taskmanagers", lambda _s: unregistered.pop(0))
    monkeypatch.setattr(flink_cluster.time, "sleep", lambda _s: None)
    flink_cluster.up(settings, taskmanagers=2, timeout_s=5)
    assert unregistered == []


def test_a_process_s_listening_ports_are_read_from_proc():
    def ports() -> set[int]:
        return {port for _, port in listeners_by_pid({os.getpid()}).get(os.getpid(), [])}

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port in ports()
    assert port not in ports()
