"""Superset's admin user, created once by pipelines/serve/superset_server.py with Superset's own Python, its
password read from secrets.env (mode 0600): never on a command line, where `ps` would show it."""

import os
from pathlib import Path

from superset.app import create_app

SECRETS = Path(os.environ["SUPERSET_HOME"]) / "secrets.env"


def main() -> None:
    values = dict(line.split("=", 1) for line in SECRETS.read_text().splitlines() if "=" in line)
    app = create_app()
    with app.app_context():
        from superset import security_manager

        if security_manager.find_user(username="admin") is not None:
            return
        user = security_manager.add_user("admin", "viewcount", "admin", "admin@localhost",
                                         security_manager.find_role("Admin"), values["SUPERSET_ADMIN_PASSWORD"])
        if not user:
            raise SystemExit("Superset did not create its admin user: see the messages above")


if __name__ == "__main__":
    main()
