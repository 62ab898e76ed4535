"""The check of a subject's Superset dashboard: headless chromium reads its first counter off the page,
and it must equal what `viewcount serve` answers."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import quote

from pipelines.config import REPO_ROOT, Settings
from pipelines.rollups.subjects import Subject
from pipelines.serve.superset_api import login
from pipelines.serve.superset_dashboards import CHECKED, slug
from pipelines.serve.superset_server import ADMIN, base_url, ensure_secrets, home, service
from pipelines.stack.services import StackError

SCREENSHOT = REPO_ROOT / "docs" / "dashboard-superset.png"


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
