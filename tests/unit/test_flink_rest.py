"""The job's source positions as read from Flink's REST API (pipelines.stream.flink_rest), against a
stand-in for the API that answers what Flink 2.2's does for these paths."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.config import Settings
from pipelines.stream.flink_rest import SourcePositions

# As Flink 2.2 names it: the topic viewcount.views with its dots as underscores.
GAUGE = "Source__source_view[1].KafkaSourceReader.topic.viewcount_views.partition.{}.currentOffset"


class FakeFlink(BaseHTTPRequestHandler):
    restarts = 0

    def do_GET(self):  # noqa: N802 - the http.server name
        path = self.path
        if path == "/jobs/j1":
            body = {"vertices": [{"id": "v1", "name": "Source: source_view[1] -> Calc[2]"},
                                 {"id": "v2", "name": "TumblingWindowAggregate -> Sink: post_minute"}]}
        elif path == "/jobs/j1/metrics?get=numRestarts":
            body = [{"id": "numRestarts", "value": str(self.restarts)}]
        elif path == "/jobs/j1/vertices/v1/subtasks/metrics":
            body = [{"id": GAUGE.format(0)}, {"id": GAUGE.format(1)}, {"id": "numRecordsIn"}]
        elif path.startswith("/jobs/j1/vertices/v1/subtasks/metrics?agg=max&get="):
            wanted = path.split("get=", 1)[1].split(",")
            assert wanted == [GAUGE.format(0), GAUGE.format(1)], wanted
            body = [{"id": GAUGE.format(0), "max": 41.0}, {"id": GAUGE.format(1), "max": -1.0}]
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flink():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFlink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    FakeFlink.restarts = 0


def test_a_partitions_position_is_one_past_the_last_offset_handed_on(flink):
    settings = replace(Settings.from_env(), flink_cluster=f"127.0.0.1:{flink.server_address[1]}")
    # Partition 1 has read nothing yet (-1): no position, its committed offset stands.
    assert SourcePositions(settings, "j1", ["viewcount.views"]).read() == {("viewcount.views", 0): 42}


def test_after_a_restart_the_gauges_are_not_trusted(flink):
    settings = replace(Settings.from_env(), flink_cluster=f"127.0.0.1:{flink.server_address[1]}")
    FakeFlink.restarts = 1
    assert SourcePositions(settings, "j1", ["viewcount.views"]).read() == {}


def test_no_answer_means_no_positions():
    settings = replace(Settings.from_env(), flink_cluster="127.0.0.1:9")  # discard port: refused
    assert SourcePositions(settings, "j1", ["viewcount.views"]).read() == {}


def test_the_mini_clusters_rest_port_is_free_and_outside_the_ports_outgoing_connections_take():
    from pipelines.stream import flink_rest

    port = flink_rest.mini_cluster_rest_port()
    assert port in flink_rest._outside_ephemeral(flink_rest.REST_PORTS)
    low = int(flink_rest.EPHEMERAL_RANGE.read_text().split()[0])
    assert port < low
