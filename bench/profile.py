"""Profiles of the pipeline: where each microsecond per event goes, in the job's JVM and in Python.

    .venv/bin/python -m bench.profile [--scale 2000]          (make profile)

Produces the night into topics of its own, then runs `viewcount run --bounded` once with
async-profiler attached to the Flink JVM (CPU samples, every thread) and py-spy sampling the
Python process (the loader and the runner). Writes bench/results/profile-{jvm,python}.svg
(flame graphs) and profile.md: per frame family, CPU seconds and microseconds per event.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.pipeline import RESULTS, drop, isolated, prepare
from pipelines.config import Settings

# Frame families a reader of the flame graph asks about, matched on the frame's text, first match wins.
FAMILIES = (
    ("JIT compiler", ("CompileBroker", "C2Compiler", "C1Compiler", "Compile::", "[C2 CompilerThre",
                      "[C1 CompilerThre")),
    ("GC", ("G1", "GC Thread", "ParallelGC", "[GC")),
    ("decode (our format)", ("dev/viewcount/flink/EventFormat", "dev.viewcount.flink.EventFormat",
                             "dev/viewcount/flink/JsonFields", "dev.viewcount.flink.JsonFields",
                             "dev/viewcount/flink/JsonLong", "dev.viewcount.flink.JsonLong")),
    ("HLL sketch (datasketches-java)", ("org/apache/datasketches", "org.apache.datasketches",
                                         "dev/viewcount/flink/Viewer", "dev.viewcount.flink.Viewer")),
    ("Kafka source (fetch, deserialize)", ("KafkaPartitionSplitReader", "kafka/clients/consumer",
                                           "kafka.clients.consumer", "SourceReaderBase", "KafkaRecordEmitter")),
    ("Kafka sink (serialize, send)", ("kafka/clients/producer", "kafka.clients.producer", "KafkaWriter",
                                      "JsonRowDataSerializationSchema", "json/JsonRowDataSerial")),
    ("window aggregation", ("WindowAggOperator", "SlicingWindow", "window/tvf", "AggsHandleFunction",
                            "LocalSlicingWindowAggOperator", "MapView", "HeapMapState")),
    ("checkpoints", ("Checkpoint", "Snapshot", "AsyncSnapshotCallable")),
    ("planner and code generation", ("calcite", "org/codehaus/janino", "org.codehaus.janino", "planner")),
)


def family(stack: str) -> str:
    for name, needles in FAMILIES:
        if any(n in stack for n in needles):
            return name
    return "other"


def read_collapsed(path: Path) -> Counter:
    stacks: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[frames] += int(count)
    return stacks


def flame_svg(stacks: Counter, title: str, path: Path, width: int = 1600, row: int = 16) -> None:
    """A flame graph (root at the bottom, width = share of samples) of collapsed stacks."""
    tree: dict = {}
    for frames, count in stacks.items():
        node = tree
        for frame in frames.split(";"):
            entry = node.setdefault(frame, [0, {}])
            entry[0] += count
            node = entry[1]
    total = sum(stacks.values()) or 1
    boxes: list[tuple[int, float, float, str, int]] = []

    def walk(node: dict, depth: int, x: float) -> int:
        deepest = depth
        for frame, (count, children) in sorted(node.items()):
            w = width * count / total
            if w >= 2.0:  # narrower boxes are unreadable and only bloat the file
                boxes.append((depth, x, w, frame, count))
                deepest = max(deepest, walk(children, depth + 1, x))
            x += w
        return deepest

    depth = walk(tree, 0, 0.0) + 1
    height = (depth + 2) * row
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11"><text x="4" y="12">{_esc(title)} ({total:,} samples)</text>']
    for level, x, w, frame, count in boxes:
        y = height - (level + 1) * row
        hue = (hash(frame.split("/")[0].split(".")[0]) % 40) + 10
        label = _esc(frame[: max(int(w / 7), 0)])
        out.append(f'<g><title>{_esc(frame)} ({100 * count / total:.1f} %)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
                   f'<text x="{x + 2:.1f}" y="{y + row - 4}">{label}</text></g>')
    out.append("</svg>")
    path.write_text("\n".join(out))


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def profiler_library(settings: Settings) -> Path:
    library = settings.jars_dir / "profiler" / "libasyncProfiler.so"
    if not library.exists():
        raise SystemExit(f"no {library}: run `make profile` (it fetches async-profiler with Maven)")
    return library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=2000)
    parser.add_argument("--interval-ms", type=int, default=5, help="CPU sampling interval")
    args = parser.parse_args(argv)
    base = Settings.from_env()
    library = profiler_library(base)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: run `make venv` (it is a dev dependency)")
    settings = isolated(base, secrets.token_hex(3))
    prepare(settings)
    RESULTS.mkdir(exist_ok=True)
    jvm_out, py_out = RESULTS / "profile-jvm.collapsed", RESULTS / "profile-python.collapsed"
    try:
        from pipelines.reference.generator import generate_night

        truth = generate_night(settings, scale=args.scale, seed=20240812, progress=lambda *_: None)
        env = {**os.environ, "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
               "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url,
               "JVM_ARGS": f"-agentpath:{library}=start,event=cpu,interval={args.interval_ms}ms,"
                           f"file={jvm_out.resolve()}"}
        started = time.monotonic()
        subprocess.run([py_spy, "record", "--format", "raw", "--rate", "20", "--output", str(py_out), "--",
                        sys.executable, "-m", "pipelines.cli", "run", "--bounded"], env=env, check=True)
        seconds = time.monotonic() - started
    finally:
        drop(settings)
    lines = [f"# Profile of one bounded run at 1:{args.scale}", "",
             f"`.venv/bin/python -m bench.profile --scale {args.scale}`: {truth.deliveries:,} records, "
             f"{seconds:.1f} s wall ({truth.deliveries / seconds:,.0f} records/s, start-up included).", ""]
    for name, path, interval_s in (("Flink JVM", jvm_out, args.interval_ms / 1000), ("Python", py_out, 0.05)):
        stacks = read_collapsed(path)
        flame_svg(stacks, f"{name}, bounded run at 1:{args.scale}", path.with_suffix(".svg"))
        by_family: Counter = Counter()
        for frames, count in stacks.items():
            by_family[family(frames) if name == "Flink JVM" else frames.split(";")[-1].split(" (")[0]] += count
        total = sum(by_family.values()) or 1
        lines += [f"## {name} ({path.with_suffix('.svg').name})", "",
                  "| frames | CPU s | share | µs per record |", "|---|---|---|---|"]
        for key, count in by_family.most_common(12):
            cpu_s = count * interval_s
            lines.append(f"| {key} | {cpu_s:.1f} | {100 * count / total:.0f} % | "
                         f"{1e6 * cpu_s / truth.deliveries:.1f} |")
        lines.append("")
    (RESULTS / "profile.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
