"""CPU per process from /proc, and the steady cut of a run by its committed records (pure arithmetic).

bench.cpu samples with these; tests/unit/test_cpu_bench.py checks them without any service.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The steady part: between these shares of the backlog committed. Not up to 90 %: the job's
# committed offsets stall short of the end (seen at 85-99 %) for about 10 s while its JVM is
# already idle, so a 90 % mark may not be seen before the job drains (docs/performance.md).
STEADY = (0.1, 0.8)
# Process groups: the job's tree (split by what runs there), the services, the measuring process.
JOB_GROUPS = ("job_jvm", "job_python", "job_other")
SERVICE_GROUPS = ("broker", "clickhouse")


@dataclass(frozen=True)
class ProcStat:
    """One line of /proc/PID/stat: the CPU a process used itself and that of its reaped children."""

    pid: int
    ppid: int
    comm: str
    own_ticks: int  # utime + stime (fields 14, 15)
    reaped_ticks: int  # cutime + cstime (fields 16, 17): children it has waited for
    rss_pages: int = 0  # resident set (field 24)


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. The command name is in parentheses and may hold spaces and ')'
    itself, so fields are counted from the last ')'."""
    head, _, tail = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    rest = tail.split()  # rest[0] is field 3 (state): field n is rest[n - 3]
    return ProcStat(pid=int(pid), ppid=int(rest[1]), comm=comm,
                    own_ticks=int(rest[11]) + int(rest[12]), reaped_ticks=int(rest[13]) + int(rest[14]),
                    rss_pages=int(rest[21]))


def read_procs() -> dict[int, ProcStat]:
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                procs[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
            except (OSError, ValueError, IndexError):  # gone between the listing and the read
                continue
    return procs


def tree(procs: dict[int, ProcStat], root: int) -> list[int]:
    """root and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(procs: dict[int, ProcStat], roots: list[int | None]) -> int:
    """Resident memory now of the process trees under roots (the job's, the services')."""
    return sum(procs[p].rss_pages for root in roots if root is not None for p in tree(procs, root)) * PAGE_BYTES


def tree_ticks(procs: dict[int, ProcStat], root: int | None) -> int:
    """All the CPU of a process tree so far: each live member's own and its reaped children's."""
    if root is None:
        return 0
    return sum(procs[p].own_ticks + procs[p].reaped_ticks for p in tree(procs, root))


def job_ticks(procs: dict[int, ProcStat], root: int) -> dict[str, int]:
    """The job's tree split: its JVM(s) (java descendants), its own Python process, and the rest
    (other descendants and every reaped child)."""
    split = dict.fromkeys(JOB_GROUPS, 0)
    for pid in tree(procs, root):
        p = procs[pid]
        name = "job_python" if pid == root else "job_jvm" if p.comm == "java" else "job_other"
        split[name] += p.own_ticks
        split["job_other"] += p.reaped_ticks
    return split


@dataclass
class Sample:
    seconds: float  # since the child started
    consumed: int  # records committed by the job's consumer group
    ticks: dict[str, int] = field(default_factory=dict)


def steady_window(samples: list[Sample], total: int, low: float = STEADY[0],
                  high: float = STEADY[1]) -> tuple[int, int] | None:
    """Indices of the first sample with more than `low` of `total` committed and of the first with
    at least `high`; None when there are not two distinct such samples (a run shorter than its
    checkpoints)."""
    first = next((i for i, s in enumerate(samples) if s.consumed > low * total), None)
    last = next((i for i, s in enumerate(samples) if s.consumed >= high * total), None)
    if first is None or last is None or last <= first or samples[last].consumed <= samples[first].consumed:
        return None
    return first, last


def us_per_record(start: Sample, end: Sample, records: int | None = None,
                  clk_tck: int = CLK_TCK) -> dict[str, float]:
    """Microseconds of CPU per record of each group between two samples (records: those consumed
    in between unless given), with the sums `job` (its tree) and `stack` (job + broker + ClickHouse)."""
    records = end.consumed - start.consumed if records is None else records
    per = {g: (end.ticks.get(g, 0) - start.ticks.get(g, 0)) / clk_tck * 1e6 / records for g in end.ticks}
    per["job"] = sum(per.get(g, 0.0) for g in JOB_GROUPS)
    per["stack"] = per["job"] + sum(per.get(g, 0.0) for g in SERVICE_GROUPS)
    return per


def steady_figures(samples: list[Sample], total: int) -> dict | None:
    window = steady_window(samples, total)
    if window is None:
        return None
    a, b = (samples[i] for i in window)
    return {"from_s": a.seconds, "to_s": b.seconds, "from_records": a.consumed, "to_records": b.consumed,
            "records_per_s": (b.consumed - a.consumed) / (b.seconds - a.seconds), "us_per_record": us_per_record(a, b)}
