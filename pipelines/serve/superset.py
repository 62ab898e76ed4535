"""Apache Superset over the subject rollups (`make superset`): its process on loopback, ClickHouse as
the dashboard user, one dashboard per tracked subject provisioned through Superset's REST API, and a
check that reads a figure off the dashboard in headless chromium.

This module is the command (`python -m pipelines.serve.superset up|down|provision|check`); the process
is superset_server.py, the REST API superset_api.py, the dashboards superset_dashboards.py and the
check superset_check.py.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.config import Settings
from pipelines.rollups.subjects import load_subjects
from pipelines.serve.superset_check import SCREENSHOT, check
from pipelines.serve.superset_dashboards import CHECKED, dashboard_url, provision
from pipelines.serve.superset_server import ADMIN, SECRETS_FILE, ensure_secrets, home, initialise, start, stop
from pipelines.stack.services import print_lines


def up(settings: Settings, with_check: bool = True) -> list[str]:
    ensure_secrets(settings)
    lines = ["superset: metadata initialised" if initialise(settings) else "superset: metadata up to date"]
    lines.append(start(settings))
    dashboards = provision(settings)
    subjects = load_subjects()
    for subject_id in dashboards:
        subject = subjects[subject_id]
        if with_check:
            figure = check(settings, subject)
            lines.append(f"checked in chromium: {CHECKED.title} = {figure:,}, as the API says"
                         + (f"; screenshot {SCREENSHOT}" if figure else ": no rollups yet, run `make demo`"))
        lines.append(f"{subject.name}: {dashboard_url(settings, subject)}")
    lines.append(f"log in as {ADMIN}, password SUPERSET_ADMIN_PASSWORD in {home(settings) / SECRETS_FILE}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve.superset", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "provision", "check"))
    parser.add_argument("--no-check", action="store_true", help="up: skip the check in chromium")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    actions = {
        "up": lambda: up(settings, with_check=not args.no_check),
        "down": lambda: [stop(settings)],
        "provision": lambda: [f"dashboard {i} for {s}" for s, i in provision(settings).items()],
        "check": lambda: [f"{s.id}: {check(settings, s):,}" for s in load_subjects().values()],
    }
    return print_lines(actions[args.action])


if __name__ == "__main__":
    sys.exit(main())
