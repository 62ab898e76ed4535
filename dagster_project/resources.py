"""Resources, filled from the environment the pipeline itself reads (VIEWCOUNT_*)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import dagster as dg

from pipelines.config import Settings
from pipelines.store.clickhouse import connect

# The local stack's defaults (`make up`), used when the variable is not set; set the variables
# to point the same definitions at another ClickHouse or Kafka.
DEFAULTS = Settings()


class ClickHouseResource(dg.ConfigurableResource):
    """The ClickHouse the rollups live in: clickhouse://user:password@host:port/database."""

    url: str = DEFAULTS.clickhouse_url

    @contextmanager
    def client(self) -> Iterator:
        """A checked clickhouse-driver client (errors say what to run or set), disconnected
        when the `with` block ends: `with clickhouse.client() as client: ...`."""
        client = connect(replace(Settings.from_env(), clickhouse_url=self.url))
        try:
            yield client
        finally:
            client.disconnect()

    def shape(self):
        """The ClickHouse cluster's shape (VIEWCOUNT_CLICKHOUSE_CLUSTER), or None for one server: the
        repairs change rows shard by shard on a cluster (pipelines/store/shapes.py, shards.py)."""
        from pipelines.store import shapes

        return shapes.configured(Settings.from_env())


def _env(name: str, default: str):
    # EnvVar keeps the value out of the run's stored config and shows its source in the UI; an
    # unset EnvVar fails every run, so the local default stands in when the variable is absent.
    return dg.EnvVar(name) if name in os.environ else default


def resources() -> dict:
    return {
        "clickhouse": ClickHouseResource(url=_env("VIEWCOUNT_CLICKHOUSE_URL", DEFAULTS.clickhouse_url)),
    }
