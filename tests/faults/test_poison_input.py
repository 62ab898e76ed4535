"""Poison input: 10,000 seeded hostile records mixed into a small valid night.

Random bytes, truncated JSON, deep nesting, numbers past 64 bits, NaN/Infinity, a wrong type for
every field of every event type, raw control characters, invalid UTF-8, payloads up to the
topic's max message size, and event times implausible against the record's Kafka timestamp
(settings.event_max_future_s ahead, event_max_age_s before). Half goes in before the night and
half after it, so the watermark meets poison both ahead of and behind valid events. Every poison
record must land in
dead_letters (matched by its topic, partition and offset) with a reason; no count may change; the
Flink job may never restart (counted from the job's own log: FLINK_LOG_DIR of the run).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from harness import (
    archive_counts,
    assert_stream_within_truth,
    compare_with_truth,
    rebuild_night,
    start_pipeline,
)

from pipelines.config import EVENT_TYPES
from pipelines.ingest import schemas
from pipelines.reference.generator import NIGHT_END_MS, NIGHT_START_MS, generate_night
from pipelines.reference.producer import send
from tests.support import namespace

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
SCALE = 50_000
SEED = 777
RECORDS = 10_000
YEAR_2099_MS = 4_070_908_800_000
# The oversize payloads mixed into the night, as fractions of the topic's max message size; the
# one at the limit (minus 1 KiB) has a test of its own, so that what it does to the job does not
# hide what the other 9,999 records do.
OVERSIZE_FRACTIONS = (1 / 256, 1 / 64, 1 / 8)
AT_THE_LIMIT = (None,)


@dataclass
class Poison:
    event_type: str
    category: str
    payload: bytes
    timestamp_ms: int
    expected_reason: str | None = None  # None: any non-empty reason


@dataclass
class Delivered:
    by_origin: dict[tuple[str, int, int], Poison] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _valid(event_type: str, rng: random.Random, number: int, event_time: int) -> dict:
    """A valid event of the type (its values drawn from the schema), poison id, given time."""
    event = {"event_id": f"poison-{number}", "event_time": event_time}
    for name, rules in schemas.load_schema(event_type)["properties"].items():
        if name in event:
            continue
        kinds = rules["type"] if isinstance(rules["type"], list) else [rules["type"]]
        if "enum" in rules:
            event[name] = rng.choice(rules["enum"])
        elif "integer" in kinds:
            event[name] = rng.randint(max(1, rules.get("minimum", 1)), 1_000_000)
        elif "array" in kinds:
            event[name] = []
        else:
            event[name] = "web"
    return event


def _wrong_values(kind: str) -> list:
    return {"integer": ["12", True, 1.5, {}, [1], 1e300],
            "string": [12, True, 1.5, {}, ["x"]],
            "array": ["x", 12, True, {}]}[kind]


def _field_kind(rules: dict) -> str:
    kinds = [k for k in (rules["type"] if isinstance(rules["type"], list) else [rules["type"]]) if k != "null"]
    return kinds[0]


def oversize(rng: random.Random, number: int, size: int) -> Poison:
    """A view or impression `size` bytes long: its client is too long for its schema."""
    t = rng.choice(("view", "impression"))
    event = _valid(t, rng, number, rng.randint(NIGHT_START_MS, NIGHT_END_MS))
    event["client"] = "@BIG@"
    filler = b"x" * (size - len(orjson.dumps(event)))
    payload = orjson.dumps(event).replace(b'"@BIG@"', b'"' + filler + b'"')
    return Poison(t, "oversize", payload, rng.randint(NIGHT_START_MS, NIGHT_END_MS))


def poison_records(seed: int, count: int, max_message_bytes: int, max_future_s: int, max_age_s: int,
                   oversize_fractions=OVERSIZE_FRACTIONS) -> list[Poison]:
    """`count` hostile records, reproducible from the seed; every category in fixed shares."""
    rng = random.Random(seed)
    # Every (event type, field, wrong value) once, round robin: "a wrong type for every field".
    wrong_types = [(t, name, value) for t in EVENT_TYPES
                   for name, rules in schemas.load_schema(t)["properties"].items()
                   for value in _wrong_values(_field_kind(rules))]
    integer_fields = [(t, name) for t in EVENT_TYPES for name, rules in schemas.load_schema(t)["properties"].items()
                      if _field_kind(rules) == "integer"]
    scalar_fields = [(t, name) for t in EVENT_TYPES for name, rules in schemas.load_schema(t)["properties"].items()
                     if _field_kind(rules) != "array"]
    string_fields = [(t, name) for t in EVENT_TYPES for name, rules in schemas.load_schema(t)["properties"].items()
                     if _field_kind(rules) == "string" and "enum" not in rules]

    def when() -> int:
        return rng.randint(NIGHT_START_MS, NIGHT_END_MS)

    def random_bytes(n):
        return Poison(rng.choice(EVENT_TYPES), "random bytes", rng.randbytes(rng.randint(0, 2_000)), when())

    def truncated(n):
        t = rng.choice(EVENT_TYPES)
        text = orjson.dumps(_valid(t, rng, n, when()))
        return Poison(t, "truncated JSON", text[:rng.randint(0, len(text) - 1)], when())

    def deep(n):
        t, name = rng.choice(scalar_fields)
        depth = rng.choice([rng.randint(2, 200), rng.randint(900, 1_100), rng.randint(5_000, 50_000)])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        nested = opener * depth + b"1" + closer * depth
        event = _valid(t, rng, n, when())
        event[name] = "@NESTED@"
        return Poison(t, "deep nesting", orjson.dumps(event).replace(b'"@NESTED@"', nested), when())

    def big_number(n):
        t, name = rng.choice(integer_fields)
        number = rng.choice([2**63, 2**64 + rng.randint(0, 10**6), -(2**63) - 1, 10 ** rng.randint(20, 400)])
        event = _valid(t, rng, n, when())
        event[name] = "@NUMBER@"
        return Poison(t, "numbers past 64 bits", orjson.dumps(event).replace(b'"@NUMBER@"', str(number).encode()),
                      when())

    def nan(n):
        t, name = rng.choice(integer_fields)
        event = _valid(t, rng, n, when())
        event[name] = "@NAN@"
        word = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
        return Poison(t, "NaN/Infinity", orjson.dumps(event).replace(b'"@NAN@"', word), when())

    def wrong_type(n):
        t, name, value = wrong_types[n % len(wrong_types)]
        event = _valid(t, rng, n, when())
        event[name] = value
        return Poison(t, "wrong type", orjson.dumps(event), when())

    def control(n):
        t, name = rng.choice(string_fields)
        event = _valid(t, rng, n, when())
        event[name] = "@CTRL@"
        raw = b'"a' + bytes([rng.randint(0, 31)]) + b'b"'  # unescaped inside a JSON string
        return Poison(t, "control characters", orjson.dumps(event).replace(b'"@CTRL@"', raw), when())

    def bad_utf8(n):
        t, name = rng.choice(string_fields)
        event = _valid(t, rng, n, when())
        event[name] = "@UTF8@"
        raw = b'"' + rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xed\xa0\x80"]) + b'"'
        return Poison(t, "invalid UTF-8", orjson.dumps(event).replace(b'"@UTF8@"', raw), when())

    def implausible(n):
        t = rng.choice(EVENT_TYPES)
        arrival = when()
        if n % 2:
            event_time = rng.choice([YEAR_2099_MS, arrival + (max_future_s + rng.randint(1, 10**6)) * 1000])
            reason = f"event_time is more than {max_future_s} s ahead of its arrival"
        else:
            event_time = rng.choice([0, arrival - (max_age_s + rng.randint(1, 10**6)) * 1000])
            reason = f"event_time is more than {max_age_s} s before its arrival"
        return Poison(t, "implausible event time", orjson.dumps(_valid(t, rng, n, event_time)), arrival, reason)

    makers = [random_bytes, truncated, deep, big_number, nan, wrong_type, control, bad_utf8, implausible]
    records = []
    for fraction in oversize_fractions:  # big, then bigger (None: the topic's limit, less 1 KiB)
        size = int(max_message_bytes * fraction) if fraction else max_message_bytes - 1_024
        records.append(oversize(rng, len(records), size))
    while len(records) < count:
        records.append(makers[len(records) % len(makers)](len(records)))
    rng.shuffle(records)
    return records


def produce_poison(settings, records: list[Poison], into: Delivered) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "message.max.bytes": 128 * 1024 * 1024, "linger.ms": 20})

    def delivered(poison):
        def report(err, msg):
            if err is not None:
                into.failed.append(f"{poison.category}: {err}")
            else:
                into.by_origin[(msg.topic(), msg.partition(), msg.offset())] = poison
        return report

    for poison in records:
        send(producer, settings.topics.source(poison.event_type), poison.payload, b"poison",
             on_delivery=delivered(poison), timestamp=poison.timestamp_ms)
        producer.poll(0)
    assert producer.flush(120) == 0


def topic_max_message_bytes(settings) -> int:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.source("view"))
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return int(configs["max.message.bytes"].value)


@pytest.fixture(scope="module")
def poisoned(own_stack_module, tmp_path_factory):
    from pipelines.store.clickhouse import connect

    settings = own_stack_module
    records = poison_records(SEED, RECORDS, topic_max_message_bytes(settings), settings.event_max_future_s,
                             settings.event_max_age_s)
    delivered = Delivered()
    produce_poison(settings, records[: RECORDS // 2], delivered)
    truth = generate_night(settings, scale=SCALE, seed=SEED)
    produce_poison(settings, records[RECORDS // 2:], delivered)
    assert delivered.failed == [] and len(delivered.by_origin) == RECORDS, delivered.failed[:5]
    run = start_pipeline(settings, tmp_path_factory.mktemp("poison"), "poisoned-night")
    code = run.finish_unless_restarted(timeout_s=900)
    return settings, connect(settings), truth, delivered, run, code


@pytest.fixture(scope="module")
def own_stack_module():
    """Topics without time retention (harness.fresh_namespace says why) and a migrated database of
    this module's own; all removed at the end."""
    import secrets

    from pipelines.config import Settings

    with namespace(Settings.from_env(), f"poison_{secrets.token_hex(4)}", topic_retention_ms=-1) as settings:
        yield settings


def test_the_poisoned_run_finishes_and_the_job_never_restarts(poisoned):
    _, _, _, _, run, code = poisoned
    restarts = run.restarts()
    assert restarts == [], f"{len(restarts)} job restarts, first: {restarts[:2]}"
    assert code == 0, f"exit code {code}:\n{run.tail()}"


def test_a_payload_at_the_topic_limit_is_dead_lettered_without_a_restart(tmp_path):
    """One record as large as the source topic takes (less 1 KiB): its dead letter carries the
    payload plus its origin and reason, which must still fit the dead-letter topic."""
    import secrets

    from pipelines.config import Settings
    from pipelines.store.clickhouse import connect

    with namespace(Settings.from_env(), f"limit_{secrets.token_hex(4)}", topic_retention_ms=-1) as settings:
        clickhouse = connect(settings)
        records = poison_records(SEED, 1, topic_max_message_bytes(settings), settings.event_max_future_s,
                                 settings.event_max_age_s, oversize_fractions=AT_THE_LIMIT)
        delivered = Delivered()
        produce_poison(settings, records, delivered)
        truth = generate_night(settings, scale=200_000, seed=SEED)
        run = start_pipeline(settings, tmp_path, "at-the-limit")
        code = run.finish_unless_restarted(timeout_s=600)
        restarts = run.restarts()
        assert restarts == [], f"{len(restarts)} job restarts, first: {restarts[:2]}"
        assert code == 0, run.tail()
        rows = {(t, p, o): r for t, p, o, r in clickhouse.execute(
            "SELECT source_topic, source_partition, source_offset, reason FROM dead_letters FINAL")}
        assert set(rows) == set(delivered.by_origin) and all(rows.values()), rows
        assert archive_counts(clickhouse) == {"view": truth.views, "impression": truth.impressions}


def test_every_poison_record_is_dead_lettered_with_a_reason(poisoned):
    _, clickhouse, _, delivered, _, _ = poisoned
    rows = {(t, p, o): reason for t, p, o, reason in clickhouse.execute(
        "SELECT source_topic, source_partition, source_offset, reason FROM dead_letters FINAL")}
    missing = Counter(p.category for origin, p in delivered.by_origin.items() if origin not in rows)
    without_reason = [origin for origin in delivered.by_origin if origin in rows and not rows[origin]]
    not_poison = [origin for origin in rows if origin not in delivered.by_origin]
    print(f"poison: {len(delivered.by_origin):,} records "
          f"({dict(Counter(p.category for p in delivered.by_origin.values()))}); "
          f"dead-lettered {len(rows):,}; missing by category {dict(missing)}")
    assert not missing, f"poison records not in dead_letters, by category: {dict(missing)}"
    assert not without_reason
    assert not not_poison, f"{len(not_poison)} valid records of the night were dead-lettered"


def test_implausible_event_times_are_refused_with_their_reason(poisoned):
    _, clickhouse, _, delivered, _, _ = poisoned
    rows = {(t, p, o): reason for t, p, o, reason in clickhouse.execute(
        "SELECT source_topic, source_partition, source_offset, reason FROM dead_letters FINAL")}
    implausible = {o: p for o, p in delivered.by_origin.items() if p.expected_reason}
    wrong = Counter((p.expected_reason, rows.get(o)) for o, p in implausible.items()
                    if rows.get(o) != p.expected_reason)
    assert not wrong, f"{sum(wrong.values())} of {len(implausible)} refused otherwise: {wrong.most_common(4)}"


def test_poison_changes_no_count(poisoned):
    _, clickhouse, truth, _, _, _ = poisoned
    assert archive_counts(clickhouse) == {"view": truth.views, "impression": truth.impressions}
    (posts,), = clickhouse.execute("SELECT count() FROM posts FINAL")
    assert posts == truth.related_posts + truth.other_posts
    assert_stream_within_truth(clickhouse, truth)
    rebuild_night(clickhouse)
    result = compare_with_truth(clickhouse, truth)
    assert result.exact, result
