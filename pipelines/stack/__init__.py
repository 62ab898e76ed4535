"""The local stack: a real Kafka broker and ClickHouse server on loopback, started and stopped by pid.

`make up` / `make down` call `python -m pipelines.stack up|down`. The processes are started,
stopped and polled in services.py; each server's own steps are in kafka_broker.py and
clickhouse_server.py. The first start generates the ClickHouse users' passwords (state folder,
credentials.env, mode 0600).
"""

from __future__ import annotations

import argparse

from pipelines.config import Settings
from pipelines.stack.clickhouse_server import clickhouse_service, start_clickhouse
from pipelines.stack.kafka_broker import create_topics, kafka_service, start_kafka
from pipelines.stack.services import Service, print_lines, stop_services


def up(settings: Settings) -> list[str]:
    messages = [start_kafka(settings), start_clickhouse(settings)]
    created = create_topics(settings)
    if created:
        messages.append(f"created topics: {', '.join(created)}")
    return messages


def down(settings: Settings) -> list[str]:
    services = [clickhouse_service(settings), kafka_service(settings)]
    return [f"{service.name} {'stopped' if stopped else 'was not running'}"
            for service, stopped in zip(services, stop_services(services), strict=True)]


def status(settings: Settings) -> list[str]:
    return [_status_line(service) for service in (kafka_service(settings), clickhouse_service(settings))]


def _status_line(service: Service) -> str:
    pid = service.running_pid()
    return f"{service.name}: {'running, pid ' + str(pid) if pid else 'stopped'} (log {service.log_file})"


def run_action(module: str, description: str, actions: dict, argv: list[str] | None) -> int:
    """`python -m <module> <action>`: the action's lines on stdout, a StackError as one line on
    stderr and exit code 1."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("action", choices=list(actions))
    args = parser.parse_args(argv)
    return print_lines(lambda: actions[args.action](Settings.from_env()))


def main(argv: list[str] | None = None) -> int:
    actions = {"up": up, "down": down, "status": status, "topics": create_topics}
    return run_action("pipelines.stack", __doc__.splitlines()[0], actions, argv)
