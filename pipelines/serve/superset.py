"""Apache Superset over the subject rollups (`make superset`): its process on loopback, ClickHouse as
the dashboard user, one dashboard per tracked subject provisioned through Superset's REST API, and a
check that reads a figure off the dashboard in headless chromium.

The Makefile installs Superset into a virtualenv of its own (<state>/superset/venv, from
stack/superset/requirements.txt); this module runs in the project's and drives that one.
"""

from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pipelines.config import REPO_ROOT, Settings
from pipelines.rollups.subjects import Subject, load_subjects
from pipelines.stack import Service, StackError

STACK_DIR = REPO_ROOT / "stack" / "superset"
REQUIREMENTS = STACK_DIR / "requirements.txt"
DATASET = "subject_minutes"  # stack/superset/subject_minutes.sql
TIME_COLUMN = "minute"  # the dataset's time axis: window_start, under a name of its own (see _dataset)
DATABASE = "viewcount"  # Superset's name for the connection
ADMIN = "admin"
SCREENSHOT = REPO_ROOT / "docs" / "dashboard-superset.png"
SECRETS_FILE = "secrets.env"


@dataclass(frozen=True)
class Counter:
    title: str
    label: str
    metric: str  # a Superset SQL metric over the dataset's minute rows


# The subject's counters, as the live page shows them. Unique viewers are missing on purpose: they
# are DataSketches HLL bytes, which ClickHouse cannot merge (viewcount serve unions them in Python).
COUNTERS = (
    Counter("Views of the Space's post", "subject views", "SUM(subject_views)"),
    Counter("Posts about it", "posts about", "SUM(posts_new)"),
    Counter("Views of those posts", "views of posts about", "SUM(views_of_posts_about)"),
    Counter("Combined views", "combined views", "SUM(combined_views)"),
    Counter("Peak listeners", "peak listeners", "MAX(listeners)"),
)
# The minute series: (chart title, its counters).
SERIES = (
    ("Views per minute (UTC)", (Counter("", "the Space's post", "SUM(subject_views)"),
                                Counter("", "posts about it", "SUM(views_of_posts_about)"))),
    ("Listeners per minute (UTC)", (Counter("", "concurrent listeners", "MAX(listeners)"),)),
)
CHECKED = COUNTERS[0]  # the figure the check reads off the page


def home(settings: Settings) -> Path:
    return settings.state_dir / "superset"


def service(settings: Settings) -> Service:
    """Superset's gunicorn, its pid and log under <state>/superset."""
    return Service("superset", home(settings))


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.superset_port}"


def dashboard_url(settings: Settings, subject: Subject) -> str:
    return f"{base_url(settings)}/superset/dashboard/{slug(subject)}/"


def slug(subject: Subject) -> str:
    return f"viewcount-{subject.id}"


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


# --- Superset's REST API -----------------------------------------------------------------------

def rison(value) -> str:
    """Superset's list endpoints take their query (`q`) in Rison, JSON's URL-friendly cousin."""
    if isinstance(value, dict):
        return "(" + ",".join(f"{k}:{rison(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list | tuple):
        return "!(" + ",".join(rison(v) for v in value) + ")"
    if isinstance(value, bool):
        return "!t" if value else "!f"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("!", "!!").replace("'", "!'") + "'"


class SupersetApi:
    """A logged-in session: a JWT for the API, and the CSRF token Superset also asks of writes."""

    def __init__(self, base: str, user: str, password: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.headers = {"Content-Type": "application/json", "Referer": base}
        token = self.call("POST", "/api/v1/security/login",
                          {"username": user, "password": password, "provider": "db", "refresh": False})
        self.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.headers["X-CSRFToken"] = self.call("GET", "/api/v1/security/csrf_token/")["result"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with self.opener.open(request, timeout=60) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise StackError(f"Superset answered {exc.code} to {method} {path}: {exc.read()[:500]!r}") from exc

    def find(self, kind: str, **equal) -> dict | None:
        """The one object of a kind (database, dataset, chart) whose columns equal these values."""
        query = {"filters": [{"col": col, "opr": "eq", "value": value} for col, value in equal.items()]}
        found = self.call("GET", f"/api/v1/{kind}/?q={quote(rison(query))}")["result"]
        return found[0] if found else None

    def upsert(self, kind: str, existing: dict | None, body: dict) -> int:
        if existing is None:
            return self.call("POST", f"/api/v1/{kind}/", body)["id"]
        self.call("PUT", f"/api/v1/{kind}/{existing['id']}", body)
        return existing["id"]


def _database(api: SupersetApi, settings: Settings) -> int:
    """The ClickHouse connection, as the dashboard user on its companion database, over the native
    protocol (clickhouse-sqlalchemy): clickhouse-connect's start-up query fails on 18.16. Written
    again on every run, so a regenerated password or another VIEWCOUNT_CLICKHOUSE_URL takes."""
    target = settings.clickhouse_as("dashboard")
    uri = (f"clickhouse+native://{quote(target.user, safe='')}:{quote(target.password, safe='')}"
           f"@{target.host}:{target.port}/{settings.clickhouse.dashboard_database}")
    return api.upsert("database", api.find("database", database_name=DATABASE), {
        "database_name": DATABASE, "sqlalchemy_uri": uri, "expose_in_sqllab": True, "allow_dml": False})


def _dataset(api: SupersetApi, database_id: int) -> int:
    sql = (STACK_DIR / f"{DATASET}.sql").read_text()
    existing = api.find("dataset", table_name=DATASET)
    if existing is None:
        dataset_id = api.call("POST", "/api/v1/dataset/", {"database": database_id, "table_name": DATASET,
                                                           "sql": sql})["id"]
    else:
        dataset_id = existing["id"]
        api.call("PUT", f"/api/v1/dataset/{dataset_id}", {"database_id": database_id, "sql": sql})
        api.call("PUT", f"/api/v1/dataset/{dataset_id}/refresh")  # columns follow the SQL
    # The time axis as a calculated column of its own name: ClickHouse 18.16 reads
    # `toStartOfMinute(window_start) AS window_start ... GROUP BY toStartOfMinute(window_start)` with
    # the alias inside the GROUP BY ("Column window_start is not under aggregate function"), which is
    # what Superset writes for a time grain on a column.
    columns = api.call("GET", f"/api/v1/dataset/{dataset_id}")["result"]["columns"]
    kept = [{k: c[k] for k in ("id", "column_name", "type", "is_dttm", "expression")}
            for c in columns if c["column_name"] != TIME_COLUMN]
    minute = next(({"id": c["id"]} for c in columns if c["column_name"] == TIME_COLUMN), {})
    api.call("PUT", f"/api/v1/dataset/{dataset_id}", {
        "main_dttm_col": TIME_COLUMN,
        "columns": [*kept, {**minute, "column_name": TIME_COLUMN, "expression": "window_start", "type": "DATETIME",
                            "is_dttm": True, "verbose_name": "minute (UTC)"}]})
    return dataset_id


def _metric(counter: Counter) -> dict:
    return {"expressionType": "SQL", "sqlExpression": counter.metric, "label": counter.label}


def _charts(dataset_id: int, subject: Subject) -> list[tuple[str, str, dict, int]]:
    """(title, viz type, form data, width in the dashboard's 12 columns) of each chart."""
    common = {"datasource": f"{dataset_id}__table", "adhoc_filters": [
        {"expressionType": "SIMPLE", "clause": "WHERE", "subject": "subject_id", "operator": "==",
         "comparator": subject.id}]}
    charts = [(c.title, "big_number_total", {**common, "viz_type": "big_number_total", "metric": _metric(c),
                                              "y_axis_format": ",d", "header_font_size": 0.4},
               width) for c, width in zip(COUNTERS, (3, 2, 3, 2, 2), strict=True)]
    charts += [(title, "echarts_timeseries_line", {
        **common, "viz_type": "echarts_timeseries_line", "x_axis": TIME_COLUMN, "time_grain_sqla": "PT1M",
        "metrics": [_metric(c) for c in counters], "groupby": [], "row_limit": 10000, "y_axis_format": ",d",
        "x_axis_time_format": "%H:%M", "show_legend": True, "rich_tooltip": True, "truncate_metric": True},
        6) for title, counters in SERIES]
    return charts


def _layout(placed: list[tuple[int, str, int]], title: str) -> dict:
    """The dashboard's layout (position_json) of (chart id, title, width) in _charts' order: the
    counters in a row, the minute series in the next."""
    rows = [placed[:len(COUNTERS)], placed[len(COUNTERS):]]
    layout: dict = {"DASHBOARD_VERSION_KEY": "v2",
                    "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
                    "HEADER_ID": {"type": "HEADER", "id": "HEADER_ID", "meta": {"text": title}},
                    "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]}}
    for number, row in enumerate(rows, 1):
        row_id = f"ROW-{number}"
        layout["GRID_ID"]["children"].append(row_id)
        layout[row_id] = {"type": "ROW", "id": row_id, "children": [], "parents": ["ROOT_ID", "GRID_ID"],
                          "meta": {"background": "BACKGROUND_TRANSPARENT"}}
        for chart_id, name, width in row:
            key = f"CHART-{chart_id}"
            layout[row_id]["children"].append(key)
            layout[key] = {"type": "CHART", "id": key, "children": [], "parents": ["ROOT_ID", "GRID_ID", row_id],
                           "meta": {"chartId": chart_id, "width": width, "height": 20 if width < 6 else 50,
                                    "sliceName": name}}
    return layout


def _dashboard(api: SupersetApi, dataset_id: int, subject: Subject) -> int:
    """The subject's dashboard, found by its slug; its charts found among the dashboard's by title,
    so a second run updates them in place."""
    title = f"{subject.name}: views, posts, listeners"
    try:
        dashboard_id = api.call("GET", f"/api/v1/dashboard/{slug(subject)}")["result"]["id"]
    except StackError:
        dashboard_id = api.call("POST", "/api/v1/dashboard/", {"dashboard_title": title, "slug": slug(subject),
                                                               "published": True})["id"]
    present = {c["slice_name"]: c for c in api.call("GET", f"/api/v1/dashboard/{dashboard_id}/charts")["result"]}
    placed = []
    for name, viz, form_data, width in _charts(dataset_id, subject):
        chart_id = api.upsert("chart", present.get(name), {
            "slice_name": name, "viz_type": viz, "datasource_id": dataset_id, "datasource_type": "table",
            "params": json.dumps(form_data), "dashboards": [dashboard_id]})
        placed.append((chart_id, name, width))
    layout = _layout(placed, title)
    api.call("PUT", f"/api/v1/dashboard/{dashboard_id}", {
        "dashboard_title": title, "published": True, "position_json": json.dumps(layout),
        "json_metadata": json.dumps({"positions": layout, "refresh_frequency": 60, "color_scheme": "supersetColors",
                                     "cross_filters_enabled": False})})
    return dashboard_id


def login(settings: Settings) -> SupersetApi:
    return SupersetApi(base_url(settings), ADMIN, ensure_secrets(settings)["SUPERSET_ADMIN_PASSWORD"])


def provision(settings: Settings) -> dict[str, int]:
    """The connection, the dataset and one dashboard per tracked subject; idempotent."""
    api = login(settings)
    dataset_id = _dataset(api, _database(api, settings))
    return {subject.id: _dashboard(api, dataset_id, subject) for subject in load_subjects().values()}


# --- the check ---------------------------------------------------------------------------------

def _expected(settings: Settings, subject: Subject) -> int:
    """The checked figure as `viewcount serve` answers it (all time), read as the dashboard user;
    0 before the pipeline has run."""
    from pipelines.serve import query
    from pipelines.serve.figures_from_rollups import subject_rollup_figures
    from pipelines.store.clickhouse import connect_dashboard

    client = connect_dashboard(settings)
    try:
        return subject_rollup_figures(client, subject, *query.ALL_TIME).subject_views
    except query.QueryError:  # no rollup rows yet
        return 0
    finally:
        client.disconnect()


def check(settings: Settings, subject: Subject, screenshot: Path = SCREENSHOT, timeout_s: float = 90.0) -> int:
    """Log in with Debian's chromium (headless), open the subject's dashboard, wait until every chart
    has drawn, and compare the first counter with the API's figure; save a screenshot (into the state
    folder while there is no data: docs/ keeps the picture of a night). Returns the figure."""
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        raise StackError("chromium and chromium-driver are not installed: run `make browser` (apt)")
    from selenium.webdriver.common.by import By

    from pipelines.serve.browser import headless_chromium

    expected = _expected(settings, subject)
    api = login(settings)
    charts = api.call("GET", f"/api/v1/dashboard/{slug(subject)}/charts")["result"]
    checked = next(str(c["id"]) for c in charts if c["slice_name"] == CHECKED.title)
    driver = headless_chromium(1400, 900)
    failed = screenshot.with_suffix(".failed.png")
    try:
        # Logged in, the form sends the browser straight on to the dashboard (not the welcome page).
        driver.get(f"{base_url(settings)}/login/?next={quote(f'/superset/dashboard/{slug(subject)}/', safe='')}")
        driver.find_element(By.ID, "username").send_keys(ADMIN)
        driver.find_element(By.ID, "password").send_keys(ensure_secrets(settings)["SUPERSET_ADMIN_PASSWORD"])
        driver.find_element(By.CSS_SELECTOR, "[type=submit]").click()
        deadline = time.monotonic() + timeout_s
        while True:
            # Each chart of the page: its id, the number a counter shows, whether a line chart has drawn.
            shown = {c["id"]: c for c in driver.execute_script(
                "return [...document.querySelectorAll('[data-test-chart-id]')].map(c => ({"
                "  id: c.dataset.testChartId, viz: c.dataset.testVizType,"
                "  number: (c.querySelector('.header-line') || {}).innerText || '',"
                "  drawn: !!c.querySelector('canvas, .ant-empty-description'),"
                "  error: (c.querySelector('.ant-alert-error') || {}).innerText || ''}))")}
            if errors := [c["error"] for c in shown.values() if c["error"]]:
                driver.save_screenshot(str(failed))
                raise StackError(f"a chart of the dashboard failed: {errors[0][:300]} (screenshot {failed}, "
                                 f"log {service(settings).log_file})")
            if len(shown) == len(charts) and all(c["number"] or c["drawn"] for c in shown.values()):
                break
            if time.monotonic() > deadline:
                driver.save_screenshot(str(failed))
                raise StackError(f"the dashboard did not draw its charts within {timeout_s:.0f} s ({shown}): "
                                 f"screenshot {failed}, log {service(settings).log_file}")
            time.sleep(0.5)
        figure = int(shown[checked]["number"].replace(",", ""))
        if figure != expected:
            raise StackError(f"Superset shows {figure:,} {CHECKED.label}, the rollups say {expected:,}")
        time.sleep(1.0)  # the line charts' entry animation
        driver.save_screenshot(str(screenshot if figure else home(settings) / screenshot.name))
        failed.unlink(missing_ok=True)
        return figure
    finally:
        driver.quit()


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
    try:
        if args.action == "up":
            lines = up(settings, with_check=not args.no_check)
        elif args.action == "down":
            lines = [stop(settings)]
        elif args.action == "provision":
            lines = [f"dashboard {i} for {s}" for s, i in provision(settings).items()]
        else:
            lines = [f"{s.id}: {check(settings, s):,}" for s in load_subjects().values()]
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
