"""pipelines/ is layered along the data path: a package imports only the floors below its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pipelines

PIPELINES = Path(pipelines.__file__).parent

# Lowest first. A package may import its own floor's modules only from itself, never a sibling's:
# stack (the local services) sits low because the Flink session cluster and Superset start through it.
FLOORS = (
    ("config",),
    ("store",),
    ("stack", "ingest"),
    ("rollups",),
    ("stream", "repair"),
    ("reference", "serve", "cluster"),
    ("cli",),
)
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}


def part_of(path: Path) -> str:
    """The package (pipelines/<name>/) or top-level module (pipelines/<name>.py) a file belongs to."""
    relative = path.relative_to(PIPELINES)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(source: str, module: str) -> set[str]:
    """The parts of pipelines/ that `source` (the module named `module`) imports, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".")[:-node.level]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "pipelines" else [base]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("pipelines.")}
    return found


def upward_imports(part: str, source: str, module: str) -> set[str]:
    return {other for other in imported_parts(source, module) - {part}
            if FLOOR_OF.get(other, len(FLOORS)) >= FLOOR_OF[part]}


def modules():
    for path in sorted(PIPELINES.rglob("*.py")):
        dotted = ".".join(("pipelines", *path.relative_to(PIPELINES).with_suffix("").parts))
        yield path, dotted


def test_every_part_of_pipelines_has_a_floor():
    parts = {part_of(path) for path, _ in modules()} - {"__init__"}
    assert parts == set(FLOOR_OF), "place a new package or module in FLOORS (lowest first)"


def test_no_package_imports_its_own_floor_or_one_above():
    upward = {}
    for path, dotted in modules():
        part = part_of(path)
        if part != "__init__" and (found := upward_imports(part, path.read_text(), dotted)):
            upward[str(path.relative_to(PIPELINES))] = sorted(found)
    assert upward == {}, "move what these need down to a lower floor (FLOORS)"


def test_the_check_sees_an_import_upwards_even_inside_a_function():
    source = "def attribute_all():\n    from pipelines.serve.query import query_text\n"
    assert upward_imports("rollups", source, "pipelines.rollups.subject_rows") == {"serve"}
    assert upward_imports("rollups", "from ..serve import query\n", "pipelines.rollups.subject_rows") == {"serve"}
    assert upward_imports("stream", "from pipelines import repair\n", "pipelines.stream.runner") == {"repair"}
    assert upward_imports("serve", "from pipelines.store import queries\n", "pipelines.serve.query") == set()
