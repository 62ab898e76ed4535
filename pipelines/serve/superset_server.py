"""Superset's process on loopback (`make superset`): its secrets, its metadata database and its
gunicorn, all under <state>/superset.

The Makefile installs Superset into a virtualenv of its own (<state>/superset/venv, from
stack/superset/requirements.txt); this module runs in the project's and drives that one.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.config import REPO_ROOT, Settings
from pipelines.stack.services import Service, StackError

STACK_DIR = REPO_ROOT / "stack" / "superset"
REQUIREMENTS = STACK_DIR / "requirements.txt"
ADMIN = "admin"
SECRETS_FILE = "secrets.env"


def home(settings: Settings) -> Path:
    return settings.state_dir / "superset"


def service(settings: Settings) -> Service:
    """Superset's gunicorn, its pid and log under <state>/superset."""
    return Service("superset", home(settings), "superset.app:create_app")


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.superset_port}"


def _venv_bin(settings: Settings, program: str) -> Path:
    path = home(settings) / "venv" / "bin" / program
    if not path.exists():
        raise StackError(f"no {path}: run `make superset` (installs Superset into its own virtualenv)")
    return path


def ensure_secrets(settings: Settings) -> dict[str, str]:
    """Superset's SECRET_KEY (signs sessions, encrypts the stored ClickHouse password) and its admin's
    password, generated once into <state>/superset/secrets.env (mode 0600, O_EXCL: two starts
    cannot both write it)."""
    path = home(settings) / SECRETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
    else:
        with os.fdopen(fd, "w") as out:
            out.write("# Superset's secret key and admin password, generated at its first start; never commit them.\n"
                      f"SUPERSET_SECRET_KEY={secrets.token_urlsafe(42)}\n"
                      f"SUPERSET_ADMIN_PASSWORD={secrets.token_urlsafe(18)}\n")
    lines = path.read_text().splitlines()
    return {k: v for k, sep, v in (line.partition("=") for line in lines) if sep and not k.startswith("#")}


def _environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "SUPERSET_HOME": str(home(settings).resolve()),
            "SUPERSET_CONFIG_PATH": str(STACK_DIR / "superset_config.py"), "FLASK_APP": "superset"}


def initialise(settings: Settings) -> bool:
    """Superset's metadata database (SQLite under <state>/superset): schema, roles, the admin. Runs
    again only when stack/superset/requirements.txt changes (a new Superset may migrate its schema)."""
    stamp = home(settings) / "initialised"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return False
    superset, python, env = _venv_bin(settings, "superset"), _venv_bin(settings, "python"), _environment(settings)
    log = service(settings).log_file
    with open(log, "ab") as out:
        for argv in ([superset, "db", "upgrade"], [superset, "init"], [python, STACK_DIR / "create_admin.py"]):
            if subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode != 0:
                raise StackError(f"Superset's `{' '.join(map(str, argv[1:]))}` failed: see {log}")
    # Its metadata holds the ClickHouse password (encrypted with the secret key) and the admin's hash.
    os.chmod(home(settings) / "superset.db", 0o600)
    stamp.write_text(wanted + "\n")
    return True


def _health(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url(settings)}/health", timeout=5) as answer:
            return answer.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _configuration_digest() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, STACK_DIR / "superset_config.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def start(settings: Settings, timeout_s: float = 240.0) -> str:
    """Superset's web server (gunicorn, one worker with threads: a 2-core machine) on loopback, in
    the background; idempotent: a live recorded pid is left alone unless stack/superset changed."""
    server = service(settings)
    started_with = home(settings) / "started-with"
    wanted = _configuration_digest()
    if (pid := server.running_pid()) is not None:
        if started_with.exists() and started_with.read_text().strip() == wanted:
            return f"superset already running (pid {pid}) at {base_url(settings)}"
        server.stop()  # its configuration or packages changed since it started
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", settings.superset_port)) == 0:
            raise StackError(f"port {settings.superset_port} is taken by another process: stop it, "
                             "or set VIEWCOUNT_SUPERSET_PORT to a free port")
    gunicorn = _venv_bin(settings, "gunicorn")
    pid = server.start([str(gunicorn), "--bind", f"127.0.0.1:{settings.superset_port}", "--workers", "1",
                        "--worker-class", "gthread", "--threads", "8", "--timeout", "120",
                        "superset.app:create_app()"], env=_environment(settings))
    started_with.write_text(wanted + "\n")
    deadline = time.monotonic() + timeout_s
    while not _health(settings):
        if not server.started_process_alive():
            raise StackError(f"Superset exited at start: see {server.log_file}")
        if time.monotonic() > deadline:
            raise StackError(f"Superset did not answer on {base_url(settings)} within {timeout_s:.0f} s: "
                             f"see {server.log_file}")
        time.sleep(0.5)
    return f"superset started (pid {pid}) at {base_url(settings)}, log {server.log_file}"


def stop(settings: Settings) -> str:
    return "superset stopped" if service(settings).stop() else "superset was not running"
