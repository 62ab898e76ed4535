"""A standalone Flink session cluster on loopback: one JobManager and TaskManagers as processes.

`make cluster-up` / `make cluster-down` (`python -m pipelines.stream.flink_cluster up|down|status`). It is
the apache-flink wheel's own distribution (pyflink/bin, pyflink/lib) run with a conf folder of ours
under the state folder; `viewcount run --cluster 127.0.0.1:<rest port>` submits the same job to it.
Its ports and sizes are the cluster stack's (Settings.cluster), which starts it last (pipelines/cluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from string import Template

from pipelines.config import REPO_ROOT, Settings
from pipelines.stack.services import StackError, ensure_port_free, listeners_by_pid, print_lines, stop_processes

TEMPLATE = REPO_ROOT / "stack" / "flink" / "config.yaml.template"


class ClusterError(StackError):
    """The cluster did not come up or cannot be reached; the message says what to do."""


def _flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent


def _home(settings: Settings) -> Path:
    return settings.state_dir / "flink-cluster"


def address(settings: Settings) -> str:
    return f"127.0.0.1:{settings.cluster.flink_rest_port}"


def ports(settings: Settings) -> dict[str, int]:
    """What the JobManager listens on; TaskManagers take free ports of their own."""
    layout = settings.cluster
    return {"REST": layout.flink_rest_port, "RPC": layout.flink_rpc_port, "blob server": layout.flink_blob_port}


def render_conf(settings: Settings) -> Path:
    conf = _home(settings) / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    for sub in ("log", "pid"):
        (_home(settings) / sub).mkdir(parents=True, exist_ok=True)
    # The wheel's java options (module opens Flink needs on Java 17) are kept as they are.
    shipped = (_flink_home() / "conf" / "config.yaml").read_text()
    java_opts = next(line.split("all:", 1)[1].strip() for line in shipped.splitlines() if "all: --add" in line)
    layout = settings.cluster
    values = {"state_dir": str(settings.state_dir.resolve()), "java_opts": java_opts,
              "rest_port": layout.flink_rest_port, "rpc_port": layout.flink_rpc_port,
              "blob_port": layout.flink_blob_port, "jobmanager_memory": layout.jobmanager_memory,
              "taskmanager_memory": layout.taskmanager_memory}
    (conf / "config.yaml").write_text(Template(TEMPLATE.read_text()).substitute(values))
    for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties"):
        shutil.copy(_flink_home() / "conf" / name, conf / name)
    return conf


def overview(settings: Settings, timeout_s: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{address(settings)}/overview", timeout=timeout_s) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


TASKMANAGER_CLASS = b"org.apache.flink.runtime.taskexecutor.TaskManagerRunner"


def _processes(settings: Settings) -> dict[int, bytes]:
    """The running JobManager's and TaskManagers' process ids (the start scripts' pid files), with
    their command lines."""
    found = {}
    for pid_file in sorted((_home(settings) / "pid").glob("*.pid")):
        for word in pid_file.read_text().split():
            try:
                command = Path(f"/proc/{word}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue  # gone, or not a pid
            if b"org.apache.flink" in command:
                found[int(word)] = command
    return found


def pids(settings: Settings) -> list[int]:
    """The running JobManager's and TaskManagers' process ids."""
    return list(_processes(settings))


def taskmanager_pids(settings: Settings) -> list[int]:
    """The running TaskManagers' process ids: processes, not what the JobManager has registered
    (after a kill -9 it lists the dead one until its heartbeats are missed, tens of seconds)."""
    return [pid for pid, command in _processes(settings).items() if TASKMANAGER_CLASS in command]


def registered_taskmanagers(settings: Settings, timeout_s: float = 2.0) -> list[dict]:
    """The TaskManagers the JobManager lists (REST /taskmanagers), dead ones it has not noticed yet included."""
    try:
        with urllib.request.urlopen(f"http://{address(settings)}/taskmanagers", timeout=timeout_s) as answer:
            return json.loads(answer.read()).get("taskmanagers", [])
    except (OSError, ValueError):
        return []


def unregistered_taskmanagers(settings: Settings) -> list[int]:
    """The running TaskManager processes the JobManager has not registered (yet): matched by the
    data port each registered TaskManager reports, which its process listens on."""
    data_ports = {tm.get("dataPort") for tm in registered_taskmanagers(settings)}
    running = taskmanager_pids(settings)
    listening = listeners_by_pid(set(running))
    return [pid for pid in running if not {port for _, port in listening.get(pid, [])} & data_ports]


def _script(settings: Settings, name: str, *args: str) -> None:
    env = {**os.environ, "FLINK_CONF_DIR": str(render_conf(settings)), "FLINK_HOME": str(_flink_home())}
    script = _flink_home() / "bin" / name
    subprocess.run(["bash", str(script), *args], env=env, check=True, stdout=subprocess.DEVNULL)


def up(settings: Settings, taskmanagers: int | None = None, timeout_s: float = 120.0) -> list[str]:
    """Start the JobManager and `taskmanagers` TaskManagers (default: the layout's; idempotent);
    wait until every TaskManager running is registered. What is missing is counted in processes:
    after a TaskManager's kill -9 the JobManager lists it for tens of seconds more (until it misses
    its heartbeats), and counted by that list the killed one was never started again."""
    taskmanagers = settings.cluster.taskmanagers if taskmanagers is None else taskmanagers
    if overview(settings) is None:
        for what, port in ports(settings).items():
            ensure_port_free(port, f"the Flink JobManager's {what}",
                             "move the cluster stack's ports with VIEWCOUNT_CLUSTER_PORT_BASE")
        _script(settings, "jobmanager.sh", "start")
    for _ in range(taskmanagers - len(taskmanager_pids(settings))):
        _script(settings, "taskmanager.sh", "start")
    deadline = time.monotonic() + timeout_s
    while (now := overview(settings)) is None or len(taskmanager_pids(settings)) < taskmanagers \
            or unregistered_taskmanagers(settings):
        if time.monotonic() > deadline:
            raise ClusterError(f"the Flink cluster did not come up with {taskmanagers} TaskManagers in "
                               f"{timeout_s:.0f} s: see {_home(settings) / 'log'}")
        time.sleep(0.5)
    return [f"flink cluster up at http://{address(settings)}: {len(taskmanager_pids(settings))} TaskManagers, "
            f"{now['slots-total']} slots; submit with `viewcount run --cluster {address(settings)} --parallelism 2`"]


# After SIGTERM, Flink stops a JVM within 5 s; the start scripts give it 10 s, as does down().
STOP_TIMEOUT_S = 10.0


def down(settings: Settings) -> list[str]:
    """Stop the JobManager and every TaskManager at once: SIGTERM to all, SIGKILL to what is left
    after STOP_TIMEOUT_S. (Flink's `stop-all` scripts stop one process after the other, waiting
    for each: 16 s for a JobManager and two TaskManagers.)"""
    if not (_home(settings) / "conf").exists():
        return ["flink cluster: not set up"]
    left = stop_processes(pids(settings), STOP_TIMEOUT_S)
    for pid_file in (_home(settings) / "pid").glob("*.pid"):
        pid_file.unlink(missing_ok=True)
    killed = f" ({len(left)} killed after {STOP_TIMEOUT_S:.0f} s)" if left else ""
    return [f"flink cluster stopped{killed}"]


def status(settings: Settings) -> list[str]:
    now = overview(settings)
    if now is None:
        return [f"flink cluster: not running at {address(settings)}"]
    return [f"flink cluster at {address(settings)}: {now['taskmanagers']} TaskManagers, "
            f"{now['slots-available']}/{now['slots-total']} slots free, {now['jobs-running']} jobs running"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--taskmanagers", type=int, help="default: the cluster stack's (pipelines/config.py)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    return print_lines(lambda: up(settings, args.taskmanagers) if args.command == "up" else (
        down(settings) if args.command == "down" else status(settings)))


if __name__ == "__main__":
    sys.exit(main())
