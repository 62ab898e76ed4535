"""The subject dashboards in Superset, provisioned through its REST API: the ClickHouse connection as the
dashboard user, the dataset of subject minutes, and one dashboard of counters and minute series per tracked
subject."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

from pipelines.config import Settings
from pipelines.rollups.subjects import Subject, load_subjects
from pipelines.serve.superset_api import SupersetApi, login
from pipelines.serve.superset_server import STACK_DIR, base_url
from pipelines.stack.services import StackError

DATASET = "subject_minutes"  # stack/superset/subject_minutes.sql
TIME_COLUMN = "minute"  # the dataset's time axis: window_start, under a name of its own (see _dataset)
DATABASE = "viewcount"  # Superset's name for the connection


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


def dashboard_url(settings: Settings, subject: Subject) -> str:
    return f"{base_url(settings)}/superset/dashboard/{slug(subject)}/"


def slug(subject: Subject) -> str:
    return f"viewcount-{subject.id}"


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


def provision(settings: Settings) -> dict[str, int]:
    """The connection, the dataset and one dashboard per tracked subject; idempotent."""
    api = login(settings)
    dataset_id = _dataset(api, _database(api, settings))
    return {subject.id: _dashboard(api, dataset_id, subject) for subject in load_subjects().values()}
