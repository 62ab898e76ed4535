"""The runner's helpers of the loader while ClickHouse is away (a fake step: no services)."""

from __future__ import annotations

import logging

from pipelines.stream.runner import BACKLOG_EVERY_S, CATCH_UP_BEHIND_S, _LiveBacklog, _WhileClickHouseAway


class _Client:
    disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


def test_a_step_backs_off_while_clickhouse_is_away_and_the_log_says_when_it_is_back(caplog):
    outcomes = iter([ConnectionRefusedError("refused"), ConnectionResetError("reset"), False, 3])

    def step():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    client = _Client()
    follow = _WhileClickHouseAway("the change feed", client, step)
    caplog.set_level(logging.INFO, logger="viewcount.runner")
    assert follow() is None
    assert follow() is None  # not due yet: the step is not called during the backoff
    follow.next_at = 0.0
    assert follow() is None
    assert follow.delay == 2.0  # 0.5 s, then 1 s, then doubled again
    follow.next_at = 0.0
    assert follow() is False  # did nothing: says nothing about ClickHouse
    assert follow() == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not reach ClickHouse" in m and "retrying with backoff" in m for m in messages) == 1
    assert sum("reached ClickHouse again" in m for m in messages) == 1
    assert client.disconnects == 2
    assert follow.delay == 0.5 and follow.away_since is None


def test_a_busy_server_is_waited_out_like_an_absent_one_and_a_wrong_statement_is_raised():
    import pytest
    from clickhouse_driver.errors import ServerException

    from pipelines.store.clickhouse import is_transient

    too_many = ServerException("Too many simultaneous queries. Maximum: 1", code=202)
    memory = ServerException("Memory limit (for query) exceeded", code=241)
    unknown_table = ServerException("Table viewcount.nope doesn't exist.", code=60)
    assert is_transient(too_many) and is_transient(memory) and is_transient(ConnectionResetError())
    assert not is_transient(unknown_table) and not is_transient(ValueError("a bug"))

    outcomes = iter([too_many, memory, 1, unknown_table])

    def step():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    refresh = _WhileClickHouseAway("the subject rollups' refresh", _Client(), step)
    assert refresh() is None
    refresh.next_at = 0.0
    assert refresh() is None
    refresh.next_at = 0.0
    assert refresh() == 1
    with pytest.raises(ServerException):
        refresh()


class _Ends:
    """A TopicEnds of one partition: its end and the job's committed offset, set by the test."""

    def __init__(self):
        self.end = self.committed = 0
        self.ends = {("views", 0): 0}

    def read_ends(self):
        self.ends[("views", 0)] = self.end

    def remaining(self):
        return self.end - self.committed


def test_live_the_job_catches_up_while_its_backlog_is_more_than_the_limit_of_arriving_events():
    ends, now = _Ends(), [0.0]
    backlog = _LiveBacklog(ends, clock=lambda: now[0])
    rate, step = 1_000, 2 * BACKLOG_EVERY_S

    def at(seconds, committed_behind):
        now[0], ends.end = seconds, int(seconds * rate)
        ends.committed = ends.end - committed_behind
        return backlog.update()

    assert at(0, 1)  # nothing has arrived yet that it could be measured against: anything left is a backlog
    assert at(1, 0)  # asked again only after BACKLOG_EVERY_S: the answer stands
    # Steady: committed with each checkpoint, the backlog saws under a checkpoint's events.
    for n in range(1, 6):
        assert not at(n * step, (5_000, 9_000)[n % 2])
    # An outage: nothing committed while events arrive, until more than CATCH_UP_BEHIND_S of them.
    stopped = ends.committed
    for n in range(6, 30):
        behind = int(n * step * rate) - stopped
        assert at(n * step, behind) == (behind > CATCH_UP_BEHIND_S * rate)
    assert backlog.catching_up
    # Restarted: it reads faster than events arrive, and is caught up once its backlog is small again.
    assert not at(31 * step, 5_000)
