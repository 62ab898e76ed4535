"""The event schemas: schemas/<type>.v<N>.json is the one place event fields are defined."""

from __future__ import annotations

import json
from functools import cache

from pipelines.config import EVENT_TYPES, REPO_ROOT

SCHEMAS_DIR = REPO_ROOT / "schemas"
CURRENT_VERSION = 1


@cache
def load_schema(event_type: str, version: int = CURRENT_VERSION) -> dict:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    return json.loads((SCHEMAS_DIR / f"{event_type}.v{version}.json").read_text())


def fields(event_type: str) -> list[str]:
    return list(load_schema(event_type)["properties"])


def required(event_type: str) -> list[str]:
    return list(load_schema(event_type).get("required", []))
