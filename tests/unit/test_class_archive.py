"""The job JVM's class archive: written by a first run, promoted once settled, then used."""

from __future__ import annotations

import os
import time

from pipelines.stream import class_archive


def _written(path, age_s: float) -> None:
    path.write_bytes(b"archive")
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_first_run_writes_an_archive_under_its_own_name(tmp_path):
    (option,) = class_archive.jvm_options(tmp_path)
    assert option.startswith("-XX:ArchiveClassesAtExit=") and option.endswith(f".jsa.{os.getpid()}")
    assert not list((tmp_path / "jvm").glob("*.jsa"))


def test_the_newest_settled_archive_is_promoted_and_used_and_a_fresh_one_waits(tmp_path):
    first = class_archive.jvm_options(tmp_path)[0].split("=", 1)[1]
    archive = first.rsplit(".", 1)[0]
    _written(tmp_path / "jvm" / f"{os.path.basename(archive)}.101", age_s=300)
    _written(tmp_path / "jvm" / f"{os.path.basename(archive)}.102", age_s=200)
    _written(tmp_path / "jvm" / f"{os.path.basename(archive)}.103", age_s=1)  # still being written
    options = class_archive.jvm_options(tmp_path)
    assert options == ["-Xshare:auto", f"-XX:SharedArchiveFile={archive}"]
    left = sorted(path.name.rsplit(".", 1)[1] for path in (tmp_path / "jvm").iterdir())
    assert left == ["103", "jsa"], "the newest settled one promoted, the older dropped, the fresh one kept"


def test_an_archive_the_user_chose_is_left_alone_and_a_child_chooses_for_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("JVM_ARGS", "-Xmx1g -XX:SharedArchiveFile=/elsewhere.jsa")
    with class_archive.for_the_next_jvm(tmp_path):
        assert os.environ["JVM_ARGS"] == "-Xmx1g -XX:SharedArchiveFile=/elsewhere.jsa"
    monkeypatch.setenv("JVM_ARGS", "-Xmx1g")
    with class_archive.for_the_next_jvm(tmp_path):
        assert os.environ["JVM_ARGS"].startswith("-Xmx1g -XX:ArchiveClassesAtExit=")
    assert os.environ["JVM_ARGS"] == "-Xmx1g", "a child process must not inherit this process's choice"
    monkeypatch.delenv("JVM_ARGS")
    with class_archive.for_the_next_jvm(tmp_path):
        assert "ArchiveClassesAtExit" in os.environ["JVM_ARGS"]
    assert "JVM_ARGS" not in os.environ


def test_the_jobs_other_options_come_after_the_users_and_the_users_collector_wins(tmp_path, monkeypatch):
    from pipelines.stream.job_environment import THROUGHPUT_COLLECTOR, garbage_collector

    assert garbage_collector(None) == garbage_collector("-Xmx2g") == [THROUGHPUT_COLLECTOR]
    assert garbage_collector("-Xmx2g -XX:+UseG1GC") == garbage_collector("-XX:+UseZGC") == []
    monkeypatch.setenv("JVM_ARGS", "-Xmx1g -XX:SharedArchiveFile=/elsewhere.jsa")
    with class_archive.for_the_next_jvm(tmp_path, also=[THROUGHPUT_COLLECTOR]):
        assert os.environ["JVM_ARGS"] == f"-Xmx1g -XX:SharedArchiveFile=/elsewhere.jsa {THROUGHPUT_COLLECTOR}"
    monkeypatch.delenv("JVM_ARGS")
    with class_archive.for_the_next_jvm(tmp_path, also=[THROUGHPUT_COLLECTOR]):
        assert os.environ["JVM_ARGS"].startswith(f"{THROUGHPUT_COLLECTOR} -XX:ArchiveClassesAtExit=")
    assert "JVM_ARGS" not in os.environ


def test_the_jobs_heap_is_capped_unless_the_user_sets_one_and_a_wrong_size_says_what_to_write():
    from dataclasses import replace

    import pytest

    from pipelines.config import Settings
    from pipelines.stream.job_environment import heap_limit

    settings = replace(Settings(), job_heap="3g")
    assert heap_limit(settings, None) == heap_limit(settings, "-XX:+UseG1GC") == ["-Xmx3g"]
    assert heap_limit(settings, "-Xms1g -Xmx2g") == [] == heap_limit(replace(settings, job_heap=""), None)
    with pytest.raises(ValueError, match="not a heap size: say e.g. 3g"):
        heap_limit(replace(settings, job_heap="3 GB"), None)
