"""Records made for tests: malformed events the job must reject, each with the reason it must give."""

from __future__ import annotations

import orjson

from pipelines.reference.night import HOST_AUTHOR_ID, NIGHT_START_MS, SUBJECT_POST_ID


def malformed_records() -> list[tuple[str, bytes, str]]:
    """(event_type, raw bytes, expected reason) for records the job must reject and keep."""
    good = {"event_id": "bad-0", "event_time": NIGHT_START_MS, "post_id": SUBJECT_POST_ID,
            "author_id": HOST_AUTHOR_ID, "viewer_id": 5, "surface": "home", "client": "web"}

    def variant(n: int, **changes) -> bytes:
        event = {**good, "event_id": f"bad-{n}", **changes}
        return orjson.dumps({k: v for k, v in event.items() if v is not ...})

    return [
        ("view", b"this is not json", "not a JSON object"),
        ("view", b"[1, 2, 3]", "not a JSON object"),
        ("view", variant(1, viewer_id=...), "missing required field viewer_id (logged-out traffic is not counted)"),
        ("view", variant(2, post_id="1"), "post_id must be an integer"),
        ("view", variant(3, surface="billboard"), "surface is not one of the known values"),
        ("view", variant(4, event_time=-1), "event_time is below its minimum 0"),
        ("view", variant(5, event_id=""), "event_id is shorter than 1"),
        ("impression", variant(6), "missing required field action"),
    ]
