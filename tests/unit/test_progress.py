"""Long work shows progress: a live bar on a terminal, plain periodic lines in a log; INFO lines survive PyFlink."""

from __future__ import annotations

import io
import logging

from pipelines.stream.progress import Progress


def test_without_a_terminal_progress_is_plain_log_lines_with_what_is_left(caplog):
    caplog.set_level(logging.INFO, logger="viewcount.progress")
    with Progress("producing the night", total=1_000, every_s=0.0, interactive=False) as progress:
        progress.set(250)
        progress.update(250)
    lines = [r.getMessage() for r in caplog.records if r.name == "viewcount.progress"]
    assert lines[0].startswith("producing the night: 250/1,000 records (25 %), 750 left, about ")
    assert lines[1].startswith("producing the night: 500/1,000 records (50 %), 500 left")
    assert "records/s" in lines[1] and "to go" in lines[1]
    assert lines[-1].startswith("producing the night: 500/1,000 records (50 %)")  # the closing line
    assert all("\r" not in line for line in lines)


def test_without_a_terminal_lines_come_at_most_every_period(caplog):
    caplog.set_level(logging.INFO, logger="viewcount.progress")
    progress = Progress("loading", total=None, every_s=3600.0, interactive=False)
    for done in range(1, 1_001):
        progress.set(done)
    progress.close()
    progress.close()  # closing twice reports once
    (line,) = [r.getMessage() for r in caplog.records if r.name == "viewcount.progress"]
    assert line.startswith("loading: 1,000 records, ")


def test_on_a_terminal_a_bar_shows_the_rate_and_the_time_to_go():
    screen = io.StringIO()
    with Progress("producing the night", total=1_000, stream=screen, interactive=True) as progress:
        progress.set(400)
        progress.set(1_000)
    shown = screen.getvalue()
    assert "producing the night" in shown and "1.00k/1.00k" in shown and "\r" in shown
    assert "records/s" in shown or "s/ records" in shown


def test_info_lines_of_a_run_survive_pyflink_setting_the_root_logger_to_warning(monkeypatch):
    from pipelines import cli

    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # restored after the test
    ours = logging.getLogger("viewcount")
    monkeypatch.setattr(ours, "level", ours.level)
    assert cli.main(["status"]) == 0  # configures logging as every command does
    # What opening a local Flink mini-cluster does (pyflink's Beam loopback worker pool):
    root.setLevel(logging.WARNING)
    assert logging.getLogger("viewcount.loader").isEnabledFor(logging.INFO)
    assert logging.getLogger("viewcount.rollup_job").isEnabledFor(logging.INFO)
