"""The Dagster UI starts on loopback against our definitions and answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import answers, poll

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_dagster_webserver_answers_on_loopback(tmp_path, stack_settings):
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIEWCOUNT_CLICKHOUSE_URL": stack_settings.clickhouse_url,
           "VIEWCOUNT_KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap}
    webserver = Path(sys.executable).with_name("dagster-webserver")
    process = subprocess.Popen(
        [str(webserver), "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def running() -> None:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]

        info = json.loads(poll(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 120,
                               "the webserver answering", interval_s=0.5, check=running))
        assert "dagster_webserver_version" in info
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/graphql?query={{version}}", timeout=10) as response:
            assert json.loads(response.read())["data"]["version"]
    finally:
        process.terminate()
        process.wait(timeout=30)
