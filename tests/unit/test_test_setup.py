"""The test session itself: it runs in UTC whatever the machine's zone (tests/conftest.py)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta


def test_the_session_runs_in_utc():
    assert os.environ["TZ"] == "UTC"
    assert time.tzname[0] == "UTC" and time.timezone == 0
    assert datetime(2024, 8, 12, 23, 47).astimezone().utcoffset() == timedelta(0)


def test_the_stream_check_fails_on_a_window_written_twice_with_a_doubled_count():
    """A test of the crash tests' check (tests/faults/harness.py): a window the stream counted twice
    must fail it, as must a window it lost; exact rows and a late event within bounds pass."""
    import pytest

    from tests.faults.harness import assert_stream_within_truth, compare_with_truth

    class Truth:  # post_id, window_start, views, impressions, deliveries, late_views, late_impressions
        post_minutes = [(1, "2024-08-13 01:02:00", 10, 2, 12, 0, 0), (2, "2024-08-13 01:03:00", 5, 0, 5, 1, 0)]

    class Client:
        def __init__(self, rows):
            self.rows = rows

        def execute(self, _query):
            return self.rows

    exact = [(1, "2024-08-13 01:02:00", 10, 2), (2, "2024-08-13 01:03:00", 4, 0)]
    assert assert_stream_within_truth(Client(exact), Truth) == 1
    doubled = [(1, "2024-08-13 01:02:00", 20, 4), (2, "2024-08-13 01:03:00", 5, 0)]
    with pytest.raises(AssertionError):
        assert_stream_within_truth(Client(doubled), Truth)
    assert compare_with_truth(Client(doubled), Truth).doubled_views == 10
    lost = [(2, "2024-08-13 01:03:00", 5, 0)]
    with pytest.raises(AssertionError):
        assert_stream_within_truth(Client(lost), Truth)
    late_counted_twice = [(1, "2024-08-13 01:02:00", 10, 2), (2, "2024-08-13 01:03:00", 6, 0)]
    with pytest.raises(AssertionError):
        assert_stream_within_truth(Client(late_counted_twice), Truth)
