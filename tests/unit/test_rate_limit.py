"""The collector's per-key rate limit: a token bucket of events, on a clock of our own, and the 429
it answers (with Retry-After, naming the limit, counted in the metrics). No services."""

from __future__ import annotations

import asyncio

import pytest

from pipelines.config import Settings
from pipelines.ingest.collector import Collector
from pipelines.ingest.collector_settings import CollectorSettings
from pipelines.ingest.rate_limit import KeyRateLimits, TokenBucket

KEY = "unit-test-key-0123456789"


def test_a_full_bucket_passes_its_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate=100, burst=500, now=0.0)
    assert bucket.take(500, now=0.0) == 0.0
    assert bucket.take(50, now=0.0) == pytest.approx(0.5)
    assert bucket.take(50, now=0.5) == 0.0, "refilled at 100 a second"


def test_a_refused_take_takes_nothing_so_waiting_as_told_is_enough():
    bucket = TokenBucket(rate=10, burst=100, now=0.0)
    bucket.take(100, now=0.0)
    wait = bucket.take(100, now=1.0)
    assert wait == pytest.approx(9.0)
    assert bucket.take(100, now=1.0 + wait) == 0.0


def test_a_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate=100, burst=500, now=0.0)
    assert bucket.take(500, now=3600.0) == 0.0
    assert bucket.take(1, now=3600.0) > 0


def test_each_client_has_its_own_bucket_and_a_rate_of_zero_is_no_limit():
    now = [0.0]
    limits = KeyRateLimits(rate=10, burst=100, clock=lambda: now[0])
    assert limits.take("greedy", 100) == 0.0
    assert limits.take("greedy", 100) == pytest.approx(10.0)
    assert limits.take("modest", 100) == 0.0
    unlimited = KeyRateLimits(rate=0, burst=100, clock=lambda: now[0])
    assert all(unlimited.take("any", 10_000) == 0.0 for _ in range(10))


def test_a_burst_smaller_than_a_full_batch_is_refused_at_start():
    with pytest.raises(ValueError, match="KEY_BURST_EVENTS=50 is less than VIEWCOUNT_COLLECTOR_MAX_EVENTS_PER_BATCH"):
        CollectorSettings(max_events_per_batch=100, key_burst_events=50)
    CollectorSettings(max_events_per_batch=100, key_burst_events=50, key_rate_events_per_s=0)  # no limit: fine


def test_the_defaults_do_not_limit_the_projects_own_loads():
    """bench.collector and the night via HTTP send one key as fast as a worker takes it: tens of
    thousands of events a second; a worker does about 100,000 (10 us of CPU an event) at most."""
    defaults = CollectorSettings()
    assert defaults.key_rate_events_per_s >= 100_000 and defaults.key_burst_events >= 100_000


async def _chunks(body: bytes):
    yield body


def test_over_its_rate_a_request_gets_429_with_retry_after_naming_the_limit_and_is_counted():
    config = CollectorSettings(keys=f"greedy={KEY}", max_events_per_batch=100, key_rate_events_per_s=10,
                               key_burst_events=100)
    collector = Collector(Settings.from_env(), config)  # not started: a 429 is answered before Kafka
    assert collector.limits.take("greedy", 100) == 0.0  # the burst, spent
    body = b'[{"event_type": "view"}, {"event_type": "view"}]'
    status, answer, headers = asyncio.run(collector.post_events(
        {"authorization": f"Bearer {KEY}", "content-type": "application/json"}, {}, _chunks(body)))
    assert status == 429
    assert headers == {"Retry-After": "1"}, "2 events at 10 a second: within a second, said in whole seconds"
    assert "'greedy' is over its rate limit of 10 events/s with bursts of 100" in answer["error"]
    assert "key_rate_events_per_s" in answer["error"]
    text = collector.metrics.text(queued=0)
    assert 'viewcount_collector_rate_limited_requests_total{key="greedy"} 1' in text
    assert 'viewcount_collector_rate_limited_events_total{key="greedy"} 2' in text
    assert 'viewcount_collector_requests_total{code="429",path="/v1/events"} 1' in text
