"""The Superset dashboard's definition (pipelines/serve/superset_dashboards.py, superset_api.py), without
Superset: `make superset` runs the real thing and checks it in chromium."""

from __future__ import annotations

import re

from pipelines.rollups.subjects import load_subjects
from pipelines.serve.superset_api import rison
from pipelines.serve.superset_dashboards import COUNTERS, DATASET, SERIES, TIME_COLUMN, _charts, _layout
from pipelines.serve.superset_server import STACK_DIR


def _dataset_columns() -> set[str]:
    sql = (STACK_DIR / f"{DATASET}.sql").read_text()
    select = re.search(r"SELECT(.*?)FROM", sql, re.S).group(1)
    return {name.strip() for name in select.split(",")}


def test_chart_queries_alias_no_column_to_its_own_name():
    # ClickHouse 18.16 reads an alias equal to a column's name inside GROUP BY and aggregates:
    # "Column window_start is not under aggregate function and not in GROUP BY".
    labels = {c.label for c in COUNTERS} | {c.label for _, cs in SERIES for c in cs}
    columns = _dataset_columns()
    assert "window_start" in columns and TIME_COLUMN not in columns
    assert not labels & (columns | {TIME_COLUMN})


def test_every_chart_is_placed_once_within_the_twelve_columns():
    subject = next(iter(load_subjects().values()))
    charts = _charts(7, subject)
    layout = _layout([(100 + i, title, width) for i, (title, _, _, width) in enumerate(charts)], "t")
    rows = [layout[row] for row in layout["GRID_ID"]["children"]]
    placed = [layout[key]["meta"]["chartId"] for row in rows for key in row["children"]]
    assert sorted(placed) == [100 + i for i in range(len(charts))]
    assert all(sum(layout[key]["meta"]["width"] for key in row["children"]) <= 12 for row in rows)
    assert all(form["adhoc_filters"][0]["comparator"] == subject.id for _, _, form, _ in charts)


def test_list_queries_are_rison_with_quotes_escaped():
    query = {"filters": [{"col": "slice_name", "opr": "eq", "value": "Views of the Space's post!"}]}
    assert rison(query) == "(filters:!((col:'slice_name',opr:'eq',value:'Views of the Space!'s post!!')))"
    assert rison({"page": 0, "flag": True, "ids": [1, 2]}) == "(page:0,flag:!t,ids:!(1,2))"
