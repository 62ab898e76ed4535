"""Sessions from presence events and the concurrent-listener curve."""

from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS, concurrent_per_minute, sessions

M = 60_000


def test_a_leave_closes_the_session_and_a_vanished_client_times_out():
    events = [(1, 0, "join"), (1, M, "heartbeat"), (1, 90_000, "leave"),
              (2, 0, "join"), (2, M, "heartbeat")]
    assert sessions(events) == [(1, 0, 90_000), (2, 0, M + HEARTBEAT_TIMEOUT_MS)]


def test_duplicates_change_nothing_and_a_missed_join_starts_at_the_heartbeat():
    events = [(3, M, "heartbeat"), (3, M, "heartbeat"), (3, 2 * M, "leave"), (3, 2 * M, "leave")]
    assert sessions(events) == [(3, M, 2 * M)]


def test_a_long_silence_splits_sessions():
    events = [(4, 0, "join"), (4, HEARTBEAT_TIMEOUT_MS + M, "heartbeat")]
    second_start = HEARTBEAT_TIMEOUT_MS + M
    assert sessions(events) == [(4, 0, HEARTBEAT_TIMEOUT_MS), (4, second_start, second_start + HEARTBEAT_TIMEOUT_MS)]


def test_a_session_counts_in_every_minute_it_touches_and_not_where_it_ends():
    curve = concurrent_per_minute([(30_000, 2 * M), (M, M + 1)], 0, 4)
    assert curve.tolist() == [1, 2, 0, 0]
