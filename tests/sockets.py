"""The listener check shared by the tests: which TCP sockets in LISTEN state processes hold, and on
which address, read from the kernel (each process's `/proc/<pid>/fd` gives its sockets' inodes;
`/proc/net/tcp` and `/proc/net/tcp6` give the LISTEN sockets' addresses by inode)."""

from __future__ import annotations

from pathlib import Path

from pipelines.stack.services import Address, listeners_by_pid


def process_tree(root: int) -> set[int]:
    """root and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def process_name(pid: int) -> str:
    """The process's command name (`java`, `python`), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def listening_sockets(pids: set[int]) -> list[tuple[Address, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of pids holds open."""
    return sorted({socket for sockets in listeners_by_pid(pids).values() for socket in sockets}, key=str)


def loopback(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def assert_loopback_only(what: str, pids: set[int], expected_ports: set[int]) -> None:
    sockets = listening_sockets(pids)
    exposed = [f"{address}:{port}" for address, port in sockets if not loopback(address)]
    assert exposed == [], f"{what} listens beyond loopback: {exposed}"
    assert expected_ports <= {port for _, port in sockets}, f"{what}: expected {expected_ports}, found {sockets}"


def listeners_until_steady(pid: int, steady, timeout_s: float = 300.0, alive=None) -> dict[tuple[int, int], tuple]:
    """Every socket the process tree of `pid` (`viewcount run`: the viewcount process and its JVM:
    py4j, blob server, REST endpoint, PyFlink) listens on, sampled every 0.1 s from its start until
    `steady()` (e.g. a checkpoint completed: every task runs) and 5 s after: (pid, port) -> (process
    name, address). `alive()` false fails it at once."""
    import time

    seen: dict[tuple[int, int], tuple] = {}
    gateway_up: set[int] = set()
    deadline, steady_until = time.monotonic() + timeout_s, None
    while steady_until is None or time.monotonic() < steady_until:
        assert alive is None or alive(), "the process ended while its sockets were sampled"
        assert time.monotonic() < deadline, f"not steady within {timeout_s:.0f} s"
        for child, sockets in listeners_by_pid(process_tree(pid)).items():
            name = process_name(child)
            if name == "java" and child not in gateway_up:
                if not any(loopback(address) for address, _ in sockets):
                    # Flink's py4j gateway picks a callback port before it starts (NetUtils
                    # .getAvailablePort: a ServerSocket on every address, closed within
                    # milliseconds, nothing accepts on it; docs/access.md): before the JVM's
                    # first loopback listener, that is all it can hold.
                    continue
                gateway_up.add(child)
            for address, port in sockets:
                seen[(child, port)] = (name, address)
        if steady_until is None and steady():
            steady_until = time.monotonic() + 5  # watch a little longer
        time.sleep(0.1)
    return seen
