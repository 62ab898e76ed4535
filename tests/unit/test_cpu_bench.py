"""bench.proc_cpu's arithmetic: /proc/PID/stat parsing, process trees, the steady cut, us per record."""

from __future__ import annotations

import pytest

from bench.proc_cpu import (
    PAGE_BYTES,
    Sample,
    job_ticks,
    parse_stat,
    read_procs,
    steady_figures,
    steady_window,
    tree,
    tree_rss_bytes,
    us_per_record,
)


def stat_line(pid, comm, ppid, utime, stime, cutime=0, cstime=0):
    # Fields 1-17 of /proc/PID/stat, then the rest (ignored here).
    return (f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} {cutime} {cstime} "
            "20 0 30 0 1000 123456 789 18446744073709551615\n")


def test_user_and_system_ticks_are_fields_14_and_15_even_with_spaces_and_parens_in_the_name():
    p = parse_stat(stat_line(42, "Flink (task) 1", 7, utime=1200, stime=34, cutime=5, cstime=6))
    assert (p.pid, p.ppid, p.comm) == (42, 7, "Flink (task) 1")
    assert p.rss_pages == 789  # field 24
    assert p.own_ticks == 1234
    assert p.reaped_ticks == 11


def test_this_process_reads_from_proc():
    import os

    procs = read_procs()
    assert os.getpid() in procs and procs[os.getpid()].own_ticks >= 0


def test_the_jobs_tree_splits_its_jvm_from_its_python_and_counts_reaped_children():
    procs = {p.pid: p for p in (
        parse_stat(stat_line(10, "python", 1, 300, 20, cutime=40, cstime=2)),  # the job's Python
        parse_stat(stat_line(11, "java", 10, 9000, 500)),  # its JVM
        parse_stat(stat_line(12, "sh", 11, 3, 1)),  # a grandchild
        parse_stat(stat_line(99, "java", 1, 777, 0)),  # the broker: not the job's
    )}
    assert sorted(tree(procs, 10)) == [10, 11, 12]
    assert job_ticks(procs, 10) == {"job_python": 320, "job_jvm": 9500, "job_other": 4 + 42}


def samples(*points):
    return [Sample(t, n, {"job_jvm": jvm, "job_python": py, "broker": b, "clickhouse": c})
            for t, n, jvm, py, b, c in points]


RUN = samples(
    # seconds, committed, jvm, python, broker, clickhouse ticks
    (0, 0, 0, 0, 0, 0),
    (10, 0, 1500, 50, 10, 5),  # start-up: nothing committed yet
    (12, 1_000, 1700, 52, 12, 6),  # 10 % exactly: not yet past it
    (14, 3_000, 1900, 54, 14, 8),  # first past 10 %: the steady part starts
    (16, 6_000, 2200, 56, 16, 9),
    (18, 9_000, 2500, 58, 18, 12),  # first at 80 % or more: it ends
    (30, 10_000, 3500, 90, 20, 40),  # drain and the last load
)


def test_the_steady_part_runs_from_past_10_percent_committed_to_80_percent():
    assert steady_window(RUN, total=10_000) == (3, 5)


def test_per_record_cpu_in_the_steady_part_is_ticks_over_records_committed_in_between():
    figures = steady_figures(RUN, total=10_000)
    per = figures["us_per_record"]
    # 600 JVM ticks at 100 Hz = 6 s over 6,000 records = 1,000 us a record.
    assert per["job_jvm"] == pytest.approx(1000.0)
    assert per["job_python"] == pytest.approx(4 / 100 * 1e6 / 6000)
    assert per["job"] == pytest.approx(per["job_jvm"] + per["job_python"])
    assert per["stack"] == pytest.approx(per["job"] + (4 + 4) / 100 * 1e6 / 6000)
    assert figures["records_per_s"] == pytest.approx(6000 / 4)


def test_the_whole_run_divides_by_every_record():
    per = us_per_record(RUN[0], RUN[-1], records=10_000, clk_tck=100)
    assert per["stack"] == pytest.approx((3500 + 90 + 20 + 40) / 100 * 1e6 / 10_000)


def test_a_run_shorter_than_its_checkpoints_has_no_steady_part():
    # One commit jumped from nothing to everything: no two distinct samples to cut between.
    assert steady_window(samples((0, 0, 0, 0, 0, 0), (20, 10_000, 9, 9, 9, 9)), total=10_000) is None
    assert steady_figures(samples((0, 0, 0, 0, 0, 0)), total=10_000) is None


def test_offsets_stalled_short_of_the_end_still_give_a_steady_part():
    # Seen: commits stop at 85 % while the JVM idles, until the drain commits the rest at once.
    stalled = samples((0, 0, 0, 0, 0, 0), (13, 500, 200, 1, 0, 0), (20, 5_000, 900, 2, 0, 0),
                      (29, 8_500, 1300, 3, 0, 0), (39, 8_500, 1310, 3, 0, 0))
    assert steady_window(stalled, total=10_000) == (2, 3)


def test_resident_memory_adds_up_over_the_trees_given():
    lines = [stat_line(1, "init", 0, 0, 0), stat_line(10, "python", 1, 0, 0), stat_line(11, "java", 10, 0, 0),
             stat_line(20, "kafka", 1, 0, 0)]
    procs = {p.pid: p for p in map(parse_stat, lines)}
    # The job's tree (python and its java) and the broker; not init, not a tree that is gone.
    assert tree_rss_bytes(procs, [10, 20, None]) == 3 * 789 * PAGE_BYTES


def lag_samples(lags: list[int], every_s: float = 5.0):
    from bench.live import LagSample

    return [LagSample(i * every_s, sent=1_000_000 + lag, committed=1_000_000) for i, lag in enumerate(lags)]


def test_a_lag_that_saws_with_the_checkpoints_is_flat_and_one_that_grows_is_not():
    from bench.live import flat

    # 300 s at 40,000/s, commits every 10 s: the lag saws between 0 and 400,000 records.
    sawing = [0 if i % 2 else 400_000 for i in range(61)]
    assert flat(lag_samples(sawing), 40_000, 10.0) == (True, 0)
    # The job 5 % short of the offered rate: 2,000 records more behind every second.
    growing = [lag + i * 5 * 2_000 for i, lag in enumerate(sawing)]
    is_flat, growth = flat(lag_samples(growing), 40_000, 10.0)
    assert not is_flat and growth == 480_000


def test_the_night_load_dates_each_event_when_sent_and_its_second_lap_repeats_no_id_of_the_first():
    from bench.live import NightLoad
    from pipelines.config import Settings, Topics

    load = NightLoad(Settings(topics=Topics(prefix="t")), scale=20_000)
    total = len(load.night.kind)
    records = [load.next_record(now_ms=1_800_000_000_000 + n) for n in range(total + 10)]
    import orjson

    events = [orjson.loads(value) for _, value, _ in records]
    first, second = ({e["event_id"] for e in lap} for lap in (events[:total], events[total:]))
    assert not first & second, "the second lap has ids of its own"
    assert len(first) < total, "the night's own duplicates (client retries) are part of its shape"
    assert [e["event_time"] for e in events] == [1_800_000_000_000 + n for n in range(total + 10)]
    assert {topic for topic, _, _ in records} == {f"t.{t}" for t in ("views", "impressions", "posts", "presence")}
