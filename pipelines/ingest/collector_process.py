"""The collector as a child process of tests and benchmarks: start, wait until ready, measure, kill."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from pipelines.config import Settings


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The VIEWCOUNT_* variables that make a new process see these settings (Kafka, topics, time rules)."""
    return {
        "VIEWCOUNT_STATE_DIR": str(settings.state_dir),
        "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
        "VIEWCOUNT_EVENT_MAX_FUTURE_S": str(settings.event_max_future_s),
        "VIEWCOUNT_EVENT_MAX_AGE_S": str(settings.event_max_age_s),
    }


class CollectorProcess:
    """`python -m pipelines.ingest.collector` as a child in a session of its own (tests, benchmarks).

    `keys` (name -> key) go in VIEWCOUNT_COLLECTOR_KEYS; with none, a `keys_file=PATH` knob makes it
    read (and watch) that keys file. Other knobs are CollectorSettings fields, as environment."""

    def __init__(self, settings: Settings, keys: dict[str, str], port: int | None = None, workers: int = 2,
                 log_path: Path | None = None, **knobs: object):
        import subprocess

        from pipelines.config import REPO_ROOT

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **settings_env(settings),
               "VIEWCOUNT_COLLECTOR_KEYS": ",".join(f"{n}={k}" for n, k in keys.items())}
        env.update({f"VIEWCOUNT_COLLECTOR_{name.upper()}": str(value) for name, value in knobs.items()})
        self.log_path = log_path or Path(f"/tmp/viewcount-collector-{self.port}.log")
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.ingest.collector", "--port", str(self.port),
                 "--workers", str(workers)],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def wait_ready(self, timeout_s: float = 60.0) -> CollectorProcess:
        """Poll /healthz until it answers (Kafka reachable) or the process dies or time runs out."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the collector exited ({self.process.returncode}): {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)  # polling interval
        raise RuntimeError(f"the collector at {self.url} was not ready after {timeout_s:.0f} s: "
                           f"{self.log_path.read_text()}")

    def pids(self) -> list[int]:
        """The supervisor and its workers (the process group)."""
        pgid = self.process.pid
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                found.append(int(stat.parent.name))
        return found

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def kill(self) -> None:
        """kill -9 of every process of the collector at once: no flush, no goodbye."""
        import signal

        # The group is signalled only while its leader is not yet reaped, so its id cannot have
        # been reused by someone else's process group.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        import signal
        import subprocess

        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)  # the supervisor and its workers
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> CollectorProcess:
        return self.wait_ready()

    def __exit__(self, *_exc) -> None:
        self.stop()
