"""Event validation in Python with the job's rules and reject reasons, for checks before Kafka.

The rules are the ones the stream job enforces: `schemas.validation_spec` compiles them from
schemas/<type>.v<N>.json and jvm/.../EventRules.java applies them. This module applies the same
compiled spec to an already parsed event and words every reason as EventRules does, so an event
the collector accepts is one the job accepts, and a reject reads the same wherever it happened.
The plausible-time rule (event_time against the record's arrival) is here too, worded as the job
words it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

import orjson

from pipelines.config import EVENT_TYPES, Settings
from pipelines.ingest import schemas

NOT_AN_OBJECT = "not a JSON object"
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
# What Java's Long.parseLong accepts (an optional sign, ASCII digits), for a minimum on a text.
_LONG_TEXT = re.compile(r"[+-]?[0-9]+\Z")
# 20 digits in a row may be an integer beyond 64 bits (a string's digits only cost a slower parse).
_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def _kind(value: object) -> str | None:
    """The JSON kind EventRules sees: None for null, "object"/"other" for kinds no field has."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: True is an int in Python, a boolean token in JSON
        return "other"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "other"  # floats: Jackson's VALUE_NUMBER_FLOAT


def _text(value: object, kind: str) -> str:
    """The field's value as EventRules holds it: the string itself, integers in decimal, arrays as JSON."""
    if kind == "string":
        return value  # type: ignore[return-value]
    if kind == "integer":
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_SUBCLASS).decode()


def _article(kind: str) -> str:
    return f"an {kind}" if kind in ("integer", "array") else f"a {kind}"


class FieldRule:
    """One entry of the job's validation spec, checked as EventRules checks it."""

    __slots__ = ("name", "kind", "required", "allowed", "minimum", "min_length", "max_length", "missing",
                 "simple_integer", "simple_string")

    def __init__(self, entry: dict):
        self.name = entry["name"]
        self.kind = entry["kind"]
        self.required = bool(entry.get("required", False))
        self.allowed = {str(v) for v in entry["enum"]} if entry.get("enum") is not None else None
        self.minimum = int(entry["minimum"]) if entry.get("minimum") is not None else None
        self.min_length = entry.get("minLength")
        self.max_length = entry.get("maxLength")
        self.missing = f"missing required field {self.name}{entry.get('missingHint', '')}"
        self.simple_integer = self.kind == "integer" and self.minimum is not None and self.allowed is None \
            and self.min_length is None and self.max_length is None
        self.simple_string = self.kind == "string" and self.minimum is None

    def reason(self, value: object) -> str | None:
        # The common valid cases first, cheaply (type() is exact: a bool is not an int here).
        exact = type(value)
        if exact is int and self.simple_integer and _LONG_MIN <= value <= _LONG_MAX and value >= self.minimum:
            return None
        if exact is str and self.simple_string and (self.allowed is None or value in self.allowed) \
                and (self.min_length is None or len(value) >= self.min_length) \
                and (self.max_length is None or len(value) <= self.max_length):
            return None
        kind = _kind(value)
        if kind is None:
            return self.missing if self.required else None
        if kind != self.kind:
            return f"{self.name} must be {_article(self.kind)}"
        if kind == "integer" and self.minimum is None and self.allowed is None and self.min_length is None \
                and self.max_length is None:
            return None  # the common case, without building the text
        text = _text(value, kind)
        if self.allowed is not None and text not in self.allowed:
            return f"{self.name} is not one of the known values"
        if self.minimum is not None:
            if kind == "integer":
                number = value
            elif _LONG_TEXT.match(text):
                number = int(text)
            else:
                return f"{self.name} does not fit in 64 bits"
            if not _LONG_MIN <= number <= _LONG_MAX:  # type: ignore[operator]
                return f"{self.name} does not fit in 64 bits"
            if number < self.minimum:  # type: ignore[operator]
                return f"{self.name} is below its minimum {self.minimum}"
        if self.min_length is not None and len(text) < self.min_length:
            return f"{self.name} is shorter than {self.min_length}"
        if self.max_length is not None and len(text) > self.max_length:
            return f"{self.name} is longer than {self.max_length}"
        return None


Validator = Callable[[object], "str | None"]


@cache
def validator(event_type: str, version: int = schemas.CURRENT_VERSION) -> Validator:
    """A function from a parsed event to its reject reason (None when valid), rules in schema order."""

    rules = tuple(FieldRule(entry) for entry in schemas.validation_spec(schemas.load_schema(event_type, version)))

    def reason(event: object) -> str | None:
        if not isinstance(event, dict):
            return NOT_AN_OBJECT
        get = event.get
        for rule in rules:
            problem = rule.reason(get(rule.name))
            if problem is not None:
                return problem
        return None

    return reason


def parse(raw: bytes | str) -> object | None:
    """Parse one record as the job does; None where the job would say "not a JSON object".

    Jackson (the job's parser) reads integers of any size as integers and rejects NaN and
    Infinity; orjson turns an integer beyond 64 bits into a float, so a record with 20 digits in
    a row is read with the standard library instead, where such a number stays an integer and
    gets the job's reason ("does not fit in 64 bits").
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not _LONG_DIGITS.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    import json

    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def reject_reason(event_type: str, raw: bytes | str) -> str | None:
    """The job's verdict on one record of a source topic: its reject reason, or None if valid."""
    event = parse(raw)
    return NOT_AN_OBJECT if event is None else validator(event_type)(event)


def plausible_time_reason(event_time_ms: int, arrival_ms: int, settings: Settings) -> str | None:
    """The plausible-time rule: an event_time too far ahead of (client clock skew) or behind its
    arrival (older than the source topics keep, so no rebuild could see it) is rejected."""
    if event_time_ms - arrival_ms > settings.event_max_future_s * 1000:
        return f"event_time is more than {settings.event_max_future_s} s ahead of its arrival"
    if arrival_ms - event_time_ms > settings.event_max_age_s * 1000:
        return f"event_time is more than {settings.event_max_age_s} s before its arrival"
    return None


def known_event_type(name: object) -> bool:
    return isinstance(name, str) and name in EVENT_TYPES
