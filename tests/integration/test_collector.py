"""The HTTP collector against the real Kafka: keys (revoked and rotated while it runs), limits, the per-key
rate limit, mixed batches, body formats, metrics, durability under kill -9, and 503s with bounded
memory when the broker is gone (a Kafka of our own)."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import threading
import time
from dataclasses import replace

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipelines.config import Settings, Topics
from pipelines.ingest.collector_client import CollectorClient, envelope
from pipelines.ingest.collector_process import CollectorProcess
from pipelines.ingest.write_keys import RELOAD_EVERY_S
from pipelines.reference.testdata import malformed_records

pytestmark = pytest.mark.integration
KEY = "test-key-0123456789abcdef"
KEYS = {"tester": KEY}
LIMITS = {"max_body_bytes": 64 * 1024, "max_events_per_batch": 100, "max_event_bytes": 2048}
GRACE_S = 8  # a rotated-out key's grace in the key rotation test


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def view(event_id: str, post_id: int = 10, at_ms: int | None = None, **changes) -> dict:
    event = {"event_id": event_id, "event_time": now_ms() if at_ms is None else at_ms, "post_id": post_id,
             "author_id": 7, "viewer_id": 100, "surface": "home", "client": "web"}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def read_topic(settings: Settings, topic: str, timeout_s: float = 30.0) -> list:
    """Every record now in the topic (all partitions, from the start to the current end)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "collector-test-reader",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        wanted = {p: end for p, end in ends.items() if end > 0}
        records = []
        deadline = time.monotonic() + timeout_s
        while wanted and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                records.append(message)
                if message.offset() + 1 >= wanted.get(message.partition(), 0):
                    wanted.pop(message.partition(), None)
        assert not wanted, f"could not read {topic} to its end within {timeout_s} s"
        return records
    finally:
        consumer.close()


def ids_in(settings: Settings, topic: str) -> set[str]:
    return {orjson.loads(m.value())["event_id"] for m in read_topic(settings, topic)}


@pytest.fixture(scope="module")
def stack(stack_settings, session_tag):
    """Source and dead-letter topics of this module's own, and a collector with small limits."""
    from pipelines.stack.kafka_broker import create_topics

    settings = replace(stack_settings, topics=Topics(prefix=f"collector{session_tag}"))
    create_topics(settings)
    with CollectorProcess(settings, KEYS, workers=2, **LIMITS) as collector:
        yield settings, collector
    _delete_topics(settings)


def _delete_topics(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.delete_topics(settings.topics.all(), operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort clean-up
            future.result()


@pytest.fixture()
def client(stack):
    _, collector = stack
    client = CollectorClient(collector.url, KEY)
    yield client
    client.close()


def test_no_key_or_a_wrong_key_gets_401_and_nothing_is_written(stack, client):
    settings, _ = stack
    body = orjson.dumps([envelope("view", view("auth-1"))])
    missing = client.post(body, key="")
    wrong = client.post(body, key="not-a-key-of-anyone-here")
    assert (missing.status, wrong.status) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "no write key" in missing.body["error"] and "not recognised" in wrong.body["error"]
    assert "auth-1" not in ids_in(settings, settings.topics.source("view"))


def test_limits_answer_413_or_400_naming_the_limit_and_write_nothing(stack, client):
    settings, _ = stack
    too_many = [envelope("view", view(f"limit-many-{i}")) for i in range(LIMITS["max_events_per_batch"] + 1)]
    reply = client.post(orjson.dumps(too_many))
    assert reply.status == 413 and "max_events_per_batch" in reply.body["error"]

    big_event = [envelope("view", view("limit-big", client="w", padding="x" * 4000))]
    reply = client.post(orjson.dumps(big_event))
    assert reply.status == 413 and "max_event_bytes" in reply.body["error"]

    body = b"\n".join(orjson.dumps(envelope("view", view(f"limit-body-{i}", padding="x" * 1500)))
                      for i in range(60))
    assert len(body) > LIMITS["max_body_bytes"]
    reply = client.post(body, content_type="application/x-ndjson")
    assert reply.status == 413 and "max_body_bytes" in reply.body["error"]

    bomb = gzip.compress(b"[" + b" " * (4 * LIMITS["max_body_bytes"]) + b"]")  # small on the wire
    reply = client.post(bomb, gzipped=True)
    assert reply.status == 413 and "max_body_bytes" in reply.body["error"] and "decompressed" in reply.body["error"]

    reply = client.post(b"[{\"event_type\": \"view\"", content_type="application/json")
    assert reply.status == 400 and "JSON array" in reply.body["error"]
    reply = client.post(b"\x1f\x8b not gzip at all", gzipped=True)
    assert reply.status == 400 and "gzip" in reply.body["error"]

    assert not {i for i in ids_in(settings, settings.topics.source("view")) if i.startswith("limit-")}


def test_a_mixed_batch_accepts_the_valid_and_dead_letters_the_invalid_with_key_and_reason(stack, client):
    settings, _ = stack
    t = now_ms()
    valid = [
        ("view", view("mixed-view", post_id=42, at_ms=t)),
        ("impression", {**view("mixed-imp", post_id=43, at_ms=t), "action": "like"}),
        ("post", {"event_id": "mixed-post", "event_time": t, "post_id": 44, "author_id": 9, "reply_to": 1,
                  "quote_of": None, "links": [], "tags": ["spaces"]}),
        ("presence", {"event_id": "mixed-presence", "event_time": t, "space_id": 1, "listener_id": 777,
                      "action": "join", "client": "ios"}),
    ]
    # The job's own malformed records (as parsed events where they parse), then the collector's rules.
    invalid = [(orjson.loads(raw) if raw.startswith(b"{") else raw.decode(), event_type, reason)
               for event_type, raw, reason in malformed_records() if raw.startswith((b"{", b"["))]
    body = [envelope(event_type, event) for event_type, event in valid]
    expected = {}
    for event, event_type, reason in invalid:
        expected[len(body)] = reason
        body.append(envelope(event_type, event) if isinstance(event, dict) else orjson.loads(event))
    future = view("mixed-future", at_ms=t + (settings.event_max_future_s + 60) * 1000)
    old = view("mixed-old", at_ms=t - (settings.event_max_age_s + 60) * 1000)
    for event, reason in ((future, f"event_time is more than {settings.event_max_future_s} s ahead of its arrival"),
                          (old, f"event_time is more than {settings.event_max_age_s} s before its arrival")):
        expected[len(body)] = reason
        body.append(envelope("view", event))
    expected[len(body)] = "event_type must be one of view, impression, post, presence"
    body.append(view("mixed-untyped"))
    expected[len(body)] = "schema_version is not a known version of its event_type"
    body.append(envelope("view", view("mixed-v9"), version=9))

    started = now_ms()
    reply = client.post(orjson.dumps(body))
    assert reply.status == 200, reply.body
    assert (reply.body["accepted"], reply.body["rejected"]) == (len(valid), len(expected))
    assert {r["position"]: r["reason"] for r in reply.body["reasons"]} == dict(list(expected.items())[:10])

    for event_type, event in valid:
        records = [m for m in read_topic(settings, settings.topics.source(event_type))
                   if orjson.loads(m.value())["event_id"] == event["event_id"]]
        assert len(records) == 1, event_type
        record = records[0]
        assert record.value() == orjson.dumps(event), "forwarded as the generator writes it, envelope removed"
        key = event["listener_id"] if event_type == "presence" else event["post_id"]
        assert record.key() == str(key).encode()
        assert started - 1000 <= record.timestamp()[1] <= now_ms(), "stamped with the request's arrival"

    letters = [orjson.loads(m.value()) for m in read_topic(settings, settings.topics.dead_letter)
               if orjson.loads(m.value())["offset"] == int(reply.body["request_id"], 16)]
    assert {letter["partition"]: letter["reason"] for letter in letters} == expected
    assert {letter["topic"] for letter in letters} == {"collector:tester"}
    by_position = {letter["partition"]: letter["payload"] for letter in letters}
    assert orjson.loads(by_position[min(expected)]) == body[min(expected)], "the event as the client sent it"


def test_gzip_ndjson_and_beacon_bodies_are_accepted(stack, client):
    settings, collector = stack
    events = [envelope("view", view(f"format-{name}")) for name in ("gzip", "ndjson", "beacon", "plain-array")]
    assert client.post(gzip.compress(orjson.dumps([events[0]])), gzipped=True).status == 200
    ndjson = orjson.dumps(events[1]) + b"\r\n\n" + orjson.dumps(envelope("view", view("format-ndjson-2"))) + b"\n"
    reply = client.post(ndjson, content_type="application/x-ndjson")
    assert (reply.status, reply.body["accepted"]) == (200, 2)
    # navigator.sendBeacon(url + "?key=...", JSON.stringify(events)): text/plain, no custom headers.
    beacon = client.post(orjson.dumps([events[2]]), content_type="text/plain;charset=UTF-8", key="",
                         query=f"?key={KEY}")
    assert beacon.status == 200
    assert client.post(orjson.dumps([events[3]]), content_type="text/plain").status == 200
    assert {"format-gzip", "format-ndjson", "format-ndjson-2", "format-beacon", "format-plain-array"} <= ids_in(
        settings, settings.topics.source("view"))
    reply = client.post(b"{}", content_type="application/xml")
    assert reply.status == 415 and "Content-Type" in reply.body["error"]


def test_metrics_count_requests_events_and_delivery_latency_in_prometheus_text(stack, client):
    import urllib.request

    _, collector = stack
    body = [envelope("view", view("metrics-ok")), envelope("view", view("metrics-bad", surface="billboard"))]
    assert client.post(orjson.dumps(body)).status == 200
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"{collector.url}/metrics", timeout=5) as reply:
            text = reply.read().decode()
            content_type = reply.headers["Content-Type"]
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        if (float(samples.get('viewcount_collector_events_rejected_total{reason="surface is not one of the known '
                              'values"}', 0)) >= 1 and samples.get("viewcount_collector_workers") == "2"):
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)  # polling interval: workers publish their counters about once a second
    assert content_type.startswith("text/plain; version=0.0.4")
    assert float(samples['viewcount_collector_requests_total{code="200",path="/v1/events"}']) >= 1
    assert float(samples['viewcount_collector_events_accepted_total{event_type="view"}']) >= 1
    assert int(samples['viewcount_collector_kafka_delivery_seconds_bucket{le="+Inf"}']) >= 2
    assert float(samples["viewcount_collector_kafka_delivery_seconds_sum"]) > 0
    assert "# TYPE viewcount_collector_kafka_delivery_seconds histogram" in text


def _post_alone(url: str, key: str, event_ids: list[str]):
    """One POST on a connection of its own: successive ones may reach either worker."""
    client = CollectorClient(url, key)
    try:
        return client.post(orjson.dumps([envelope("view", view(i)) for i in event_ids]))
    finally:
        client.close()


def _wait_out_the_reload(changed_at: float) -> None:
    """The promise under test: every request from RELOAD_EVERY_S after a change of the keys file sees it."""
    time.sleep(max(0.0, changed_at + RELOAD_EVERY_S + 0.1 - time.monotonic()))


def test_a_revoked_key_gets_401_and_a_rotated_in_key_works_without_a_restart(stack, tmp_path):
    """Keys from a keys file, changed with the CLI's functions while a collector of two workers runs:
    a revoked key is refused, a rotated-in key accepted, the rotated-out one until its grace ends,
    and a broken file keeps the keys in force."""
    from pipelines.ingest.write_keys import new_write_key, revoke_write_keys, rotate_write_key

    settings, _ = stack
    keys_file = tmp_path / "collector" / "keys"
    ios_old = new_write_key(keys_file, "ios-app")
    leaving = new_write_key(keys_file, "leaving")
    written, refused = set(), set()

    def post(key: str, event_id: str):
        reply = _post_alone(collector.url, key, [event_id])
        (written if reply.status == 200 else refused).add(event_id)
        return reply

    with CollectorProcess(settings, {}, workers=2, keys_file=keys_file, **LIMITS) as collector:
        assert post(ios_old, "keys-before-ios").status == 200
        assert post(leaving, "keys-before-leaving").status == 200

        ios_new, expires_at = rotate_write_key(keys_file, "ios-app", grace_s=GRACE_S)
        revoke_write_keys(keys_file, "leaving")
        changed = time.monotonic()
        assert ios_new not in keys_file.read_text() and leaving not in keys_file.read_text()
        _wait_out_the_reload(changed)
        old_accepted = 0
        for n in range(6):
            revoked = post(leaving, f"keys-revoked-{n}")
            assert revoked.status == 401 and "not recognised" in revoked.body["error"], revoked
            assert post(ios_new, f"keys-new-{n}").status == 200
            old = post(ios_old, f"keys-old-{n}")
            if time.time() < expires_at:  # answered before the grace ended: the old key still works
                assert old.status == 200, old
                old_accepted += 1
        assert old_accepted, f"the grace of {GRACE_S} s ended before the old key could be tried"

        deadline = expires_at + RELOAD_EVERY_S + 30
        n = 0
        while (old := post(ios_old, f"keys-expiring-{n}")).status == 200:
            assert time.time() < deadline, "the rotated-out key still works after its grace"
            n += 1
            time.sleep(0.2)  # polling interval, until the grace ends
        assert old.status == 401 and time.time() >= expires_at, old
        assert "expired" in old.body["error"] and "rotated" in old.body["error"]
        assert post(ios_new, "keys-new-after-expiry").status == 200

        keys_file.write_text("ios-app sha256:this-is-not-a-hash\n")
        changed = time.monotonic()
        _wait_out_the_reload(changed)
        for n in range(4):
            assert post(ios_new, f"keys-broken-file-{n}").status == 200, "the last good keys hold"
            assert post(leaving, f"keys-revoked-broken-{n}").status == 401
        assert "cannot be used" in collector.log_path.read_text()

    in_kafka = ids_in(settings, settings.topics.source("view"))
    assert written <= in_kafka, sorted(written - in_kafka)[:5]
    assert not refused & in_kafka, "a refused key's events are not written"


def test_over_its_rate_a_key_gets_429_with_retry_after_and_another_key_is_not_limited(stack):
    settings, _ = stack
    greedy_key, modest_key = "greedy-key-0123456789abcdef", "modest-key-0123456789abcdef"
    batch = LIMITS["max_events_per_batch"]
    rate = {"key_rate_events_per_s": 10, "key_burst_events": batch}
    with CollectorProcess(settings, {"greedy": greedy_key, "modest": modest_key}, workers=2, **LIMITS,
                          **rate) as collector:
        greedy = CollectorClient(collector.url, greedy_key)
        # Each worker's bucket holds one full batch and refills a tenth of one a second: of three
        # batches sent one after the other, two reach the same worker (on one keep-alive connection
        # all do), and the later of them is over the rate.
        replies = []
        for n in range(3):
            replies.append(greedy.post(orjson.dumps([envelope("view", view(f"rate-greedy-{n}-{i}"))
                                                     for i in range(batch)])))
            if replies[-1].status != 200:
                break
        greedy.close()
        refused = replies[-1]
        assert refused.status == 429, [reply.status for reply in replies]
        assert 1 <= int(refused.headers["retry-after"]) <= batch / rate["key_rate_events_per_s"]
        assert "'greedy' is over its rate limit of 10 events/s" in refused.body["error"]
        assert "key_rate_events_per_s" in refused.body["error"]

        modest = _post_alone(collector.url, modest_key, [f"rate-modest-{i}" for i in range(batch)])
        assert modest.status == 200, "another key has buckets of its own"

        deadline = time.monotonic() + 15
        while True:
            samples = _metric_samples(collector.url)
            if float(samples.get('viewcount_collector_rate_limited_requests_total{key="greedy"}', 0)) >= 1:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.2)  # polling interval: workers publish their counters about once a second
        assert float(samples['viewcount_collector_rate_limited_events_total{key="greedy"}']) >= batch
        assert 'viewcount_collector_rate_limited_requests_total{key="modest"}' not in samples

    in_kafka = ids_in(settings, settings.topics.source("view"))
    assert f"rate-modest-{batch - 1}" in in_kafka and "rate-greedy-0-0" in in_kafka
    refused_n = len(replies) - 1
    assert not {i for i in in_kafka if i.startswith(f"rate-greedy-{refused_n}-")}, "a 429 writes nothing"


def _metric_samples(url: str) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_a_2xx_is_durable_when_the_collector_is_killed_under_load(stack_settings, session_tag):
    """Clients send batches from several threads; the whole collector gets kill -9 mid-load;
    every event of every batch answered 2xx must be in Kafka."""
    from pipelines.stack.kafka_broker import create_topics

    settings = replace(stack_settings, topics=Topics(prefix=f"collkill{session_tag}"))
    create_topics(settings)
    acknowledged: list[str] = []
    failed = threading.Event()
    try:
        with CollectorProcess(settings, KEYS, workers=2) as collector:
            stop = threading.Event()

            def client_loop(n: int) -> None:
                client = CollectorClient(collector.url, KEY, timeout_s=10)
                batch_no = 0
                while not stop.is_set():
                    ids = [f"kill-{n}-{batch_no}-{i}" for i in range(200)]
                    body = orjson.dumps([envelope("view", view(i, post_id=1 + n)) for i in ids])
                    try:
                        reply = client.post(body)
                    except (OSError, http.client.HTTPException):
                        return  # the collector is gone: this batch was never acknowledged
                    if reply.status == 200:
                        acknowledged.extend(ids)
                    elif reply.status != 503:
                        failed.set()
                    batch_no += 1

            threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(acknowledged) < 20_000 and time.monotonic() < deadline:
                time.sleep(0.05)  # polling interval: let the load build up
            collector.kill()
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not failed.is_set()
        assert len(acknowledged) >= 20_000, "the load did not build up before the kill"
        in_kafka = ids_in(settings, settings.topics.source("view"))
        lost = set(acknowledged) - in_kafka
        assert not lost, f"{len(lost)} acknowledged events are not in Kafka, e.g. {sorted(lost)[:3]}"
    finally:
        _delete_topics(settings)


def test_kafka_down_gives_503_with_retry_after_and_bounded_memory(stack_settings, tmp_path):
    """A Kafka of our own (other ports), stopped under the collector: answers are 503 with
    Retry-After within the ack timeout, memory stays bounded, and it recovers when Kafka is back."""
    from pipelines.ingest.collector_process import free_port
    from pipelines.stack.kafka_broker import create_topics, kafka_service

    (tmp_path / "jars").symlink_to(stack_settings.jars_dir.resolve())
    own = replace(stack_settings, state_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                  kafka_controller_port=free_port(), topics=Topics(prefix="down"), topic_partitions=2)
    service = kafka_service(own)
    _start_broker(own)
    try:
        create_topics(own)
        with CollectorProcess(own, KEYS, workers=1, ack_timeout_s=2, max_queued_events=5_000,
                              retry_after_s=3) as collector:
            client = CollectorClient(collector.url, KEY, timeout_s=30)

            def batch(tag: str) -> bytes:
                return orjson.dumps([envelope("view", view(f"down-{tag}-{i}", padding="x" * 400))
                                     for i in range(500)])

            deadline = time.monotonic() + 60
            while (reply := client.post(batch("before"))).status != 200:  # a new broker: first leaders, producer id
                assert reply.status == 503 and time.monotonic() < deadline, reply.body
            baseline = collector.rss_bytes()
            _stop_broker(service)
            statuses, slowest = [], 0.0
            for n in range(200):  # 100,000 events of ~0.5 KB offered to a collector without Kafka
                started = time.monotonic()
                reply = client.post(batch(f"during-{n}"))
                slowest = max(slowest, time.monotonic() - started)
                statuses.append(reply.status)
                if reply.status == 503:
                    assert reply.headers["retry-after"] == "3"
                    assert "retry later" in reply.body["error"]
            grown = collector.rss_bytes() - baseline
            assert set(statuses) == {503}, statuses
            assert slowest < 2 + 1.5, "a request waited longer than the ack timeout"
            assert grown < 64 * 1024 * 1024, f"memory grew by {grown / 2**20:.0f} MiB while Kafka was down"

            _start_broker(own)
            deadline = time.monotonic() + 60
            while (reply := client.post(batch("after"))).status != 200:
                assert reply.status == 503 and time.monotonic() < deadline, reply.body
                time.sleep(0.5)  # polling interval: the collector probes Kafka about once a second
            assert reply.body["accepted"] == 500
    finally:
        _stop_broker(service)


def _start_broker(settings: Settings) -> None:
    from pipelines.stack.kafka_broker import start_kafka
    from pipelines.stack.services import StackError

    try:
        start_kafka(settings)
    except StackError as exc:  # seen once on the shared 2-core machine: a JVM gone without a word; once more
        if "exited during start-up" not in str(exc):
            raise
        start_kafka(settings)


def _stop_broker(service) -> None:
    """SIGTERM to our broker, then reap it: it is this process's child, and a zombie would look alive
    to Service.stop for its whole timeout."""
    import os
    import signal

    pid = service.running_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.1)  # polling interval for the broker's exit
    except ChildProcessError:
        pass  # already reaped (subprocess reaps a finished child it no longer holds)
    service.pid_file.unlink(missing_ok=True)
