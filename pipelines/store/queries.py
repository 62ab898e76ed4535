"""The analyst queries (sql/queries) by name: the reads of the stored tables that the rollups and the
serving layer both send."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pipelines.config import REPO_ROOT

QUERIES_DIR = REPO_ROOT / "sql" / "queries"


@cache
def query_text(name: str) -> str:
    path = QUERIES_DIR / f"{name}.sql"
    if not path.is_file():
        raise KeyError(f"no analyst query named {name!r} in {QUERIES_DIR}")
    return path.read_text()


def query_files() -> list[Path]:
    return sorted(QUERIES_DIR.glob("*.sql"))
