"""The event schemas: schemas/<type>.v<N>.json is the one place event fields are defined, and
`validation_spec` the one compiler of their rules (the job's format and the collector enforce it)."""

from __future__ import annotations

import json
from functools import cache

from pipelines.config import EVENT_TYPES, REPO_ROOT

SCHEMAS_DIR = REPO_ROOT / "schemas"
CURRENT_VERSION = 1
# The JSON kinds an event field may have: the viewcount-event format (jvm/) decodes these.
DECODABLE_KINDS = ("integer", "string", "array")
# Hints added to a missing-field reason, where the absence has a meaning of its own.
MISSING_HINTS = {"viewer_id": " (logged-out traffic is not counted)"}


@cache
def load_schema(event_type: str, version: int = CURRENT_VERSION) -> dict:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    return json.loads((SCHEMAS_DIR / f"{event_type}.v{version}.json").read_text())


def fields(event_type: str) -> list[str]:
    return list(load_schema(event_type)["properties"])


def required(event_type: str) -> list[str]:
    return list(load_schema(event_type).get("required", []))


def column_of(field: str) -> str:
    """The job's column for a schema field: event_time is carried as epoch milliseconds."""
    return "event_time_ms" if field == "event_time" else field


def validation_spec(schema: dict) -> list[dict]:
    """The schema's rules in the form the viewcount-event format (jvm/) enforces, field by field."""
    required = set(schema.get("required", []))
    spec = []
    for name, rules in schema["properties"].items():
        types = rules.get("type")
        kinds = [t for t in ([types] if isinstance(types, str) else types) if t != "null"]
        if len(kinds) != 1 or kinds[0] not in DECODABLE_KINDS:
            raise ValueError(f"schema field {name!r} has a type the job cannot decode: {types}")
        entry = {"name": name, "column": column_of(name), "kind": kinds[0], "required": name in required}
        entry.update({k: rules[k] for k in ("enum", "minimum", "minLength", "maxLength") if k in rules})
        if name in MISSING_HINTS:
            entry["missingHint"] = MISSING_HINTS[name]
        spec.append(entry)
    return spec
