"""The simulated night's ground truth: exact answers (per post and minute too) that tests compare the
pipeline's figures with, written to and read from a JSON file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from pipelines.reference.night import (
    IMPRESSION,
    NIGHT_MINUTES,
    NIGHT_START_MS,
    POST,
    SUBJECT_POST_ID,
    VIEW,
    Night,
    _enum,
    event_id,
)


class PostMinute(NamedTuple):
    """Exact figures of one post and minute of the night (duplicate deliveries counted once)."""

    post_id: int
    window_start: str  # 'YYYY-MM-DD HH:MM:SS', UTC
    views: int
    impressions: int
    unique_viewers: int  # distinct viewer ids of the views
    late_views: int  # delivered beyond the stream's watermark: only a rebuild from the archive counts them
    late_impressions: int

    @property
    def has_late_events(self) -> bool:
        return bool(self.late_views or self.late_impressions)


@dataclass
class GroundTruth:
    """Exact answers for the generated night; late = delivered beyond the stream's watermark."""

    scale: int
    seed: int
    subject_post_id: int
    subject_views: int
    subject_impressions: int
    subject_unique_viewers: int
    related_posts: int
    related_views: int
    related_impressions: int
    combined_views: int
    conversation_unique_viewers: int
    other_posts: int
    other_views: int
    views: int
    impressions: int
    unique_viewers: int
    deliveries: int
    duplicate_deliveries: int
    late_events: int
    subject_views_by_surface: dict[str, int] = field(default_factory=dict)
    listeners_per_minute: list[int] = field(default_factory=list)
    peak_listeners: int = 0
    peak_minute: str = ""
    unique_listeners: int = 0
    late_event_ids: list[str] = field(default_factory=list)
    post_minutes: list[PostMinute] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> GroundTruth:
        fields = json.loads(path.read_text())
        fields["post_minutes"] = [PostMinute(*row) for row in fields.get("post_minutes", [])]
        return cls(**fields)


def ground_truth(night: Night, scale: int, detail: bool = True) -> GroundTruth:
    import pandas as pd

    from pipelines.rollups.listeners import concurrent_per_minute

    curve = concurrent_per_minute(night.listener_sessions.tolist(), NIGHT_START_MS, NIGHT_MINUTES)
    first = ~night.duplicate
    frame = pd.DataFrame({
        "kind": night.kind[first], "post_id": night.post_id[first], "viewer_id": night.viewer_id[first],
        "minute": (night.event_time[first] // 60_000) * 60, "late": night.late[first],
        "index": night.event_index[first], "surface": night.surface[first],
    })
    views = frame[frame.kind == VIEW]
    impressions = frame[frame.kind == IMPRESSION]
    subject = views.post_id == SUBJECT_POST_ID
    related = views.post_id.isin(night.related_post_ids)
    related_impressions = impressions.post_id.isin(night.related_post_ids)
    late = frame[frame.late]
    rows = []
    if detail:
        counted = frame[(frame.kind == VIEW) | (frame.kind == IMPRESSION)].assign(
            is_view=lambda f: f.kind == VIEW, is_impression=lambda f: f.kind == IMPRESSION,
        )
        counted = counted.assign(
            late_view=counted.is_view & counted.late, late_impression=counted.is_impression & counted.late,
        )
        sums = counted.groupby(["post_id", "minute"])[
            ["is_view", "is_impression", "late_view", "late_impression"]].sum()
        distinct = (views.drop_duplicates(["post_id", "minute", "viewer_id"])
                    .groupby(["post_id", "minute"]).size().rename("unique_viewers"))
        table = sums.join(distinct, how="left").fillna({"unique_viewers": 0}).reset_index()
        table = table.rename(columns={"is_view": "views", "is_impression": "impressions",
                                      "late_view": "late_views", "late_impression": "late_impressions"})
        for r in table.itertuples(index=False):
            start = datetime.fromtimestamp(int(r.minute), UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append(PostMinute(int(r.post_id), start, int(r.views), int(r.impressions), int(r.unique_viewers),
                                   int(r.late_views), int(r.late_impressions)))
    return GroundTruth(
        scale=scale, seed=night.seed, subject_post_id=SUBJECT_POST_ID,
        subject_views=int(subject.sum()),
        subject_impressions=int((impressions.post_id == SUBJECT_POST_ID).sum()),
        subject_unique_viewers=int(views.viewer_id[subject].nunique()),
        related_posts=len(night.related_post_ids),
        related_views=int(related.sum()),
        related_impressions=int(related_impressions.sum()),
        combined_views=int(subject.sum() + related.sum()),
        conversation_unique_viewers=int(views.viewer_id[subject | related].nunique()),
        other_posts=int((frame.kind == POST).sum()) - len(night.related_post_ids),
        other_views=int((~subject & ~related).sum()),
        views=len(views), impressions=len(impressions),
        unique_viewers=int(views.viewer_id.nunique()),
        deliveries=len(night.kind), duplicate_deliveries=int(night.duplicate.sum()),
        subject_views_by_surface={
            _enum("view", "surface")[int(i)]: int(n) for i, n in views[subject].surface.value_counts().items()},
        listeners_per_minute=curve.tolist(), peak_listeners=int(curve.max()),
        peak_minute=datetime.fromtimestamp((NIGHT_START_MS + int(curve.argmax()) * 60_000) / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M:%S"),
        unique_listeners=len(night.listener_sessions),
        late_events=len(late), late_event_ids=[event_id(night.seed, int(i)) for i in late["index"]],
        post_minutes=rows,
    )
