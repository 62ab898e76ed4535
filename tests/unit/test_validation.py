"""The collector's validator gives the job's verdicts and words them as the job does."""

from __future__ import annotations

import json
from dataclasses import replace

import orjson
import pytest

from pipelines.config import Settings
from pipelines.ingest import validation
from pipelines.reference.generator import build_night, night_events
from pipelines.reference.testdata import malformed_records


@pytest.mark.parametrize(("event_type", "raw", "expected"), malformed_records())
def test_python_reasons_equal_the_jobs_reasons_for_malformed_records(event_type, raw, expected):
    assert validation.reject_reason(event_type, raw) == expected


def test_every_event_of_a_generated_night_is_valid():
    night = build_night(scale=20_000, seed=7)
    checked = 0
    for _, event_type, event in night_events(night):
        assert validation.reject_reason(event_type, orjson.dumps(event)) is None, (event_type, event)
        checked += 1
    assert checked > 50_000


VIEW = {"event_id": "e-1", "event_time": 1723506420000, "post_id": 1, "author_id": 1, "viewer_id": 5,
        "surface": "home", "client": "web"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"post_id": 1.0}, "post_id must be an integer"),          # Jackson: a float token
    ({"post_id": True}, "post_id must be an integer"),         # a boolean is not an integer
    ({"viewer_id": None}, "missing required field viewer_id (logged-out traffic is not counted)"),
    ({"post_id": 2**63}, "post_id does not fit in 64 bits"),
    ({"post_id": 2**70}, "post_id does not fit in 64 bits"),  # beyond orjson: read again by json
    ({"post_id": 0}, "post_id is below its minimum 1"),
    ({"client": "x" * 33}, "client is longer than 32"),
    ({"client": {"name": "web"}}, "client must be a string"),
    ({"event_id": "é" * 64}, None),                             # lengths count code points, as Java does
    ({"links": "not checked for views"}, None),                 # fields the schema lacks are ignored
    ({"post_id": "1", "surface": "billboard"}, "post_id must be an integer"),  # schema order decides
])
def test_edge_cases_read_as_jsonfields_reads_them(change, expected):
    raw = json.dumps({**VIEW, **change}).encode()  # the standard library writes integers of any size
    assert validation.reject_reason("view", raw) == expected


def test_nan_and_trailing_garbage_are_not_json_objects():
    assert validation.reject_reason("view", b'{"post_id": NaN}') == "not a JSON object"
    assert validation.reject_reason("view", orjson.dumps(VIEW) + b" {}") == "not a JSON object"


def test_plausible_time_rule_names_its_bound():
    settings = replace(Settings(), event_max_future_s=3600, event_max_age_s=600)
    arrival = 1_800_000_000_000
    assert validation.plausible_time_reason(arrival + 3_600_000, arrival, settings) is None
    assert (validation.plausible_time_reason(arrival + 3_600_001, arrival, settings)
            == "event_time is more than 3600 s ahead of its arrival")
    assert validation.plausible_time_reason(arrival - 600_000, arrival, settings) is None
    assert (validation.plausible_time_reason(arrival - 600_001, arrival, settings)
            == "event_time is more than 600 s before its arrival")
