"""The test session itself: it runs in UTC whatever the machine's zone (tests/conftest.py)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta


def test_the_session_runs_in_utc():
    assert os.environ["TZ"] == "UTC"
    assert time.tzname[0] == "UTC" and time.timezone == 0
    assert datetime(2024, 8, 12, 23, 47).astimezone().utcoffset() == timedelta(0)
