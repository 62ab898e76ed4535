"""The local ClickHouse server: started, its users' generated passwords, and which databases its
readers may use."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from pathlib import Path

from pipelines.config import ROLES, Settings
from pipelines.stack.services import Service, StackError, ensure_port_free, port_open, wait_until


def clickhouse_service(settings: Settings) -> Service:
    return Service("clickhouse", settings.state_dir / "clickhouse", "clickhouse")


def ensure_credentials(settings: Settings) -> Path:
    """Generate the ClickHouse users' passwords once (mode 0600); later starts reuse them."""
    path = settings.credentials_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# ClickHouse passwords of this local stack, generated at its first start; never commit them.",
             "# The code reads them from here unless VIEWCOUNT_CLICKHOUSE_URL or the variables below are set."]
    lines += [f"VIEWCOUNT_CLICKHOUSE_{role.upper()}_PASSWORD={secrets.token_urlsafe(24)}" for role in ROLES]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def _reader_grants(settings: Settings, service: Service | None = None) -> Path:
    """Re-render users.xml and config.xml (under a lock: concurrent sessions each add theirs) letting
    the dashboard user into every dashboard companion that exists now and the analyst into every
    analysis companion (with its cluster), and make a running server load them."""
    from pipelines.store.clickhouse import ClickHouseUnavailable, connect, render_clickhouse_config

    service = service or clickhouse_service(settings)
    home = service.home
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing: list[str] = []
        writer = None
        if service.running_pid() is not None:
            try:  # not yet possible on a server still running with the passwords of before
                writer = connect(settings, database="default")
                existing = [name for (name,) in writer.execute("SELECT name FROM system.databases")]
            except ClickHouseUnavailable:
                writer = None
        users = home / "users.xml"
        before = users.stat().st_mtime if users.exists() else 0.0
        config = render_clickhouse_config(
            settings, dashboard_databases=[name for name in existing if name.endswith("_dashboard")],
            analyst_databases=[name for name in existing if name != "system"], home=home)
        # The server notices a changed users.xml by its mtime, in whole seconds: two renders within
        # one second must still look different.
        stamp = max(time.time(), before + 1.0)
        os.utime(users, (stamp, stamp))
        if writer is not None:
            writer.execute("SYSTEM RELOAD CONFIG")
            writer.disconnect()
    return config


def allow_readers(settings: Settings, timeout_s: float = 30.0) -> None:
    """Let the local stack's dashboard and analyst users into settings' companion databases (made
    by the migrations), load the analysis cluster and complete the analysis database with it
    (pipelines/store/analysis.py), polling until each reader can use its own; a no-op unless this
    state folder's ClickHouse is running. An existing server's users and cluster are set by its
    administrator (README, Access)."""
    from pipelines.store import analysis
    from pipelines.store.clickhouse import ClickHouseUnavailable, connect, connect_analyst, connect_dashboard

    if clickhouse_service(settings).running_pid() is None:
        return
    _reader_grants(settings)
    cluster = analysis.cluster_name(settings.clickhouse.database)
    deadline = time.monotonic() + timeout_s
    completed = False
    while True:
        try:
            if not completed:
                writer = connect(settings, database="default")
                try:
                    if not analysis.has_cluster(writer, settings.clickhouse.database):
                        raise ClickHouseUnavailable(f"the server has not loaded cluster {cluster}")
                    analysis.ensure(writer, settings.clickhouse.database)
                finally:
                    writer.disconnect()
                completed = True
            connect_dashboard(settings).disconnect()
            connect_analyst(settings).disconnect()
            return
        except ClickHouseUnavailable as exc:
            if time.monotonic() >= deadline:
                raise StackError(f"the readers cannot use {settings.clickhouse.dashboard_database} and "
                                 f"{settings.clickhouse.analysis_database} after {timeout_s:.0f} s: {exc}") from exc
        time.sleep(0.2)


def start_clickhouse(settings: Settings, timeout_s: float = 60.0, service: Service | None = None,
                     port_remedy: str = "set VIEWCOUNT_CLICKHOUSE_URL to a free port") -> str:
    """Start a ClickHouse server listening where settings.clickhouse points (the local stack's, or
    one of the cluster stack's with its own service folder), and wait until the writer gets in."""
    service = service or clickhouse_service(settings)
    target = settings.clickhouse
    ensure_credentials(settings)
    if service.running_pid() is not None:
        # Running since before the passwords existed, or with an older users.xml: the server
        # reloads users.xml live, so re-rendering it is the whole upgrade.
        _reader_grants(settings, service)
        wait_until(f"ClickHouse at {target.host}:{target.port} with the generated passwords",
                   lambda: _answers(settings), service, timeout_s)
        return f"{service.name} already running (pid {service.running_pid()}) at {target.host}:{target.port}"
    ensure_port_free(target.port, "ClickHouse", port_remedy)
    config = _reader_grants(settings, service)
    pid = service.start([clickhouse_server(), f"--config-file={config}"])
    wait_until(f"ClickHouse at {target.host}:{target.port}", lambda: _answers(settings), service, timeout_s)
    return f"{service.name} started (pid {pid}) at {target.host}:{target.port}, log {service.log_file}"


def clickhouse_server() -> str:
    server = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
    if not Path(server).exists():
        raise StackError("no clickhouse-server: run `make clickhouse` (installs Debian's clickhouse-server)")
    return server


def _answers(settings: Settings) -> bool:
    from pipelines.store.clickhouse import wait_ready

    if not port_open(settings.clickhouse.host, settings.clickhouse.port):
        return False  # not listening yet: spare the driver's logged traceback of a refused connection
    try:
        wait_ready(settings, timeout_s=1)
    except Exception:  # noqa: BLE001 - not ready yet, poll again
        return False
    return True
