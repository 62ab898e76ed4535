"""Resources, filled from the environment the pipeline itself reads (VIEWCOUNT_*)."""

from dataclasses import replace

import dagster as dg

from pipelines.clickhouse import connect
from pipelines.config import Settings


class ClickHouseResource(dg.ConfigurableResource):
    """The ClickHouse the rollups live in: clickhouse://user:password@host:port/database."""

    url: str

    def client(self):
        return connect(replace(Settings.from_env(), clickhouse_url=self.url))


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster of the stream (for sensors and checks that look at the topics)."""

    bootstrap: str


def resources() -> dict:
    return {
        "clickhouse": ClickHouseResource(url=dg.EnvVar("VIEWCOUNT_CLICKHOUSE_URL")),
        "kafka": KafkaResource(bootstrap=dg.EnvVar("VIEWCOUNT_KAFKA_BOOTSTRAP")),
    }
