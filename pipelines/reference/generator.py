"""`generate_night`: the reference night built, its ground truth written, and the night sent to Kafka.

The night lives in `pipelines.reference.night`, its events in `pipelines.reference.night_events`, its
ground truth in `pipelines.reference.ground_truth`, the Kafka producer in `pipelines.reference.producer`;
the names other modules and tests take from here are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from pipelines.config import Settings
from pipelines.reference.ground_truth import GroundTruth, PostMinute, ground_truth
from pipelines.reference.night import (
    FLOOD_DELAY_MINUTES,
    HOST_AUTHOR_ID,
    IMPRESSION,
    MAX_DISORDER_MS,
    NIGHT_END_MS,
    NIGHT_MINUTES,
    NIGHT_START_MS,
    POST,
    PRESENCE,
    SUBJECT_POST_ID,
    TRACKED_TAG,
    TYPE_NAMES,
    VIEW,
    Night,
    build_night,
    event_id,
)
from pipelines.reference.night_events import night_events
from pipelines.reference.producer import produce
from pipelines.stream.progress import Progress

__all__ = [
    "FLOOD_DELAY_MINUTES", "HOST_AUTHOR_ID", "IMPRESSION", "MAX_DISORDER_MS", "NIGHT_END_MS", "NIGHT_MINUTES",
    "NIGHT_START_MS", "POST", "PRESENCE", "SUBJECT_POST_ID", "TRACKED_TAG", "TYPE_NAMES", "VIEW", "GroundTruth",
    "Night", "PostMinute", "build_night", "event_id", "generate_night", "ground_truth", "night_events", "produce",
]


def generate_night(settings: Settings, scale: int = 1000, seed: int = 20240812,
                   rate: float | None = None, truth_path: Path | None = None,
                   produce_to_kafka: bool = True, truth_detail: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   via: str | None = None, via_key: str = "") -> GroundTruth:
    """Build the night at 1:`scale`, write its ground truth to `truth_path` (if given), send it
    to Kafka, or through the HTTP collector at `via` as client batches. Without a
    `progress(sent, total)` callback, progress shows as a bar on a terminal and as periodic log
    lines elsewhere (`pipelines.stream.progress`)."""
    night = build_night(scale, seed)
    truth = ground_truth(night, scale, detail=truth_detail)
    if truth_path is not None:
        truth.write(truth_path)
    if produce_to_kafka:
        shown = Progress("producing the night", total=len(night.kind)) if progress is None else nullcontext()
        with shown:
            report = progress or (lambda sent, _total: shown.set(sent))
            if via:  # through the HTTP collector at this URL (pipelines/ingest/collector_client.py)
                from pipelines.ingest.collector_client import send_night

                send_night(via, via_key, ((t, e) for _, t, e in night_events(night)), len(night.kind), report,
                           rate=rate)
            else:
                produce(settings, night, rate=rate, progress=report)
    return truth
