"""The job's Flink table environment: its jars, the mini-cluster's options, checkpoints, its Java functions.

`table_environment` also restores the job from its newest restore point (pipelines.stream.restore_points).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pipelines.config import Settings
from pipelines.stream import class_archive, flink_rest
from pipelines.stream.restore_points import latest_checkpoint, prune_restore_points

# The job's logger: what it logs here belongs to the job's run.
log = logging.getLogger("viewcount.rollup_job")

# Java functions of jvm/ (built into the job's UDF jar by `make jars`).
JAVA_FUNCTIONS = {
    "event_time_of": "dev.viewcount.flink.PlausibleTime",
    "implausible_time": "dev.viewcount.flink.TimeReason",
    "viewer_sketch": "dev.viewcount.flink.ViewerSketch",
    "post_window": "dev.viewcount.flink.PostWindow",
    "emit_version": "dev.viewcount.flink.EmitVersion",
}


def job_jars(settings: Settings) -> list[Path]:
    """What the job's classloader needs beside Flink: the Kafka connector, our functions and format,
    and their dependencies (the DataSketches jars)."""
    return [settings.connector_jar, settings.udf_jar, *settings.udf_dependency_jars]


# The local mini-cluster's servers listen on loopback only (docs/access.md, "Listeners"): only
# this process talks to them (the job client is in-process; the Kafka connector only connects
# out). Flink binds each of them to every address unless told otherwise. Its RPC is in-process
# (no socket) on a mini-cluster; queryable state is off (and its runtime is not in the wheel).
LOOPBACK = "127.0.0.1"
MINI_CLUSTER_BIND_OPTIONS = {
    "jobmanager.bind-host": LOOPBACK,  # the blob server
    "rest.bind-address": LOOPBACK,  # the REST endpoint and web UI
    "rest.address": LOOPBACK,  # the address the REST endpoint advertises (else "localhost")
    "taskmanager.bind-host": LOOPBACK,  # the shuffle (netty) servers: only with 2+ TaskManagers
}
# PyFlink runs Python functions on a local mini-cluster through a gRPC "worker pool" in this
# process, bound to every address ('[::]:0' in pyflink's BeamFnLoopbackWorkerPoolServicer.start,
# no option) and started by TableEnvironment's constructor whenever the target is local, which it
# is at creation even for a --cluster run. The job has no Python function, so it never needs one;
# in "process" mode PyFlink does not start it (a Python function would then run in a process the
# JVM starts, its Beam servers on loopback).
PYTHON_WORKER_MODE = ("_python_worker_execution_mode", "process")


# The job's JVM collects garbage with the throughput collector, not the JVM's default (G1 on this
# box): measured side by side, 5-8 us of CPU a record less over a catch-up and a fifth less peak
# memory (docs/performance.md, "Cut 5"). Its collections stop the job instead of running beside it:
# tens of milliseconds for the young generation, seconds for a full collection of a large heap. An
# operator who names a collector in JVM_ARGS (-XX:+UseG1GC for its shorter pauses) gets that one.
THROUGHPUT_COLLECTOR = "-XX:+UseParallelGC"


def garbage_collector(jvm_args: str | None) -> list[str]:
    """The job's collector option: ours, unless `jvm_args` (the user's JVM_ARGS) names one."""
    return [] if jvm_args and re.search(r"-XX:\+Use\w*GC\b", jvm_args) else [THROUGHPUT_COLLECTOR]


def heap_limit(settings: Settings, jvm_args: str | None) -> list[str]:
    """The job's -Xmx (Settings.job_heap), unless `jvm_args` (the user's JVM_ARGS) sets one."""
    if not settings.job_heap or (jvm_args and re.search(r"-Xmx\S+", jvm_args)):
        return []
    if not re.fullmatch(r"\d+[kKmMgG]?", settings.job_heap):
        raise ValueError(f"VIEWCOUNT_JOB_HEAP={settings.job_heap!r} is not a heap size: say e.g. 3g or 3072m")
    return [f"-Xmx{settings.job_heap}"]


def table_environment(settings: Settings, restore: bool = True):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    # Read by TableEnvironment's constructor (TableEnvironment._open): it must be set before.
    os.environ[PYTHON_WORKER_MODE[0]] = PYTHON_WORKER_MODE[1]
    # PyFlink launches its JVM here, once a process.
    jvm_args = os.environ.get("JVM_ARGS")
    with class_archive.for_the_next_jvm(settings.state_dir,
                                        also=[*garbage_collector(jvm_args), *heap_limit(settings, jvm_args)]):
        t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = t_env.get_config()
    checkpoint_dir = settings.checkpoint_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if settings.flink_cluster:
        # A standalone session cluster (make cluster-up, or any other): the job's jars travel with
        # it; its parallelism must be set here (the cluster's default is not the client's).
        host, _, port = settings.flink_cluster.rpartition(":")
        config.set("execution.target", "remote")
        config.set("rest.address", host or "127.0.0.1")
        config.set("rest.port", port)
    else:
        # The local mini-cluster runs in this process's JVM: its servers listen on loopback only.
        for key, value in MINI_CLUSTER_BIND_OPTIONS.items():
            config.set(key, value)
        config.set("rest.bind-port", str(flink_rest.mini_cluster_rest_port()))
        # The REST API's metrics are a copy refreshed this often (10 s by default): a bounded run
        # reads its sources' positions there.
        config.set("metrics.fetcher.update-interval", "500 ms")
    config.set("pipeline.name", f"viewcount-rollups ({settings.topics.prefix}.{settings.job_name})")
    config.set("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in job_jars(settings)))
    config.set("parallelism.default", str(settings.parallelism))
    config.set("pipeline.object-reuse", "true")
    config.set("execution.checkpointing.interval", f"{settings.checkpoint_interval_ms} ms")
    config.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    config.set("execution.checkpointing.dir", checkpoint_dir.resolve().as_uri())
    config.set("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    config.set("execution.checkpointing.num-retained", "2")
    # Window starts are UTC: the session time zone decides how TIMESTAMP_LTZ windows are cut.
    config.set("table.local-time-zone", "UTC")
    # The job runs from a compiled plan (pipelines.stream.job_plans). By default Flink names the
    # operators of such a plan after its node ids, which count up inside each JVM; a restarted job
    # whose plan was planned anew (another watermark floor) could then miss its checkpoint's state.
    # Without: operator ids come from the graph's shape, as for a job planned from SQL.
    config.set("table.exec.uid.generation", "DISABLED")
    if restore and (checkpoint := latest_checkpoint(checkpoint_dir)) is not None:
        # After a crash (kill -9) the new process continues from the last completed checkpoint:
        # window state, Kafka offsets and the open sink transactions all come back together.
        log.info("restoring from checkpoint %s", checkpoint)
        config.set("execution.state-recovery.path", checkpoint.resolve().as_uri())
        # Only the newest restore point is ever used: without this, every run would leave its
        # retained checkpoints and savepoint behind for good.
        prune_restore_points(checkpoint_dir, keep=checkpoint)
    return t_env


def register_functions(t_env) -> None:
    for name, java_class in JAVA_FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION {name} AS '{java_class}' LANGUAGE JAVA")
