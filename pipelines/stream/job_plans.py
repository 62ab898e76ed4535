"""The job's compiled plans, kept: a job whose SQL was planned before starts without the planner.

Planning the job (Calcite's rules, code generation for each source's watermark) is about half of a
cold start of `viewcount run`: ~4 s of the ~8.7 s before a job is submitted on this 2-core box
(docs/performance.md, "Start-up"). Flink can compile a statement set into a plan (JSON: the
optimised operators, their expressions and every table's options) and run a plan loaded back
without planning again. `compiled` keeps each plan under the state folder, keyed by the job's SQL.

What differs between two deployments of the same job, its topic prefix, job name and Kafka
bootstrap (the tests run many namespaces, the benchmarks too), is planned as a stand-in
(`PLACEHOLDERS`) and written into the plan's JSON when it is loaded, so a plan serves every
namespace. So is a restarted job's watermark floor (`FLOOR_PLACEHOLDER`): a restart after a crash or
an outage, when the backlog waits, starts from a plan too (planning it anew took 10 s of the
restart in bench.live's outage). The rest of the SQL is in the key as it is: another validation
bound or bounded mode is another plan. So is another Flink, or another build of our jar's functions
and formats.

Operator ids come from the job graph's shape (`table.exec.uid.generation` DISABLED, set in
job_environment), as for a job planned from SQL: a checkpoint restores into the same job whether
it was planned from SQL, planned now or loaded, and whatever its watermark floor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import replace
from pathlib import Path

from pipelines.config import Settings, Topics

log = logging.getLogger("viewcount.rollup_job")

# Bumped when what a plan depends on changes in a way the key cannot see.
PLAN_FORMAT = 1
# The newest plans kept (by last use).
KEPT_PLANS = 16
# Stand-ins for the values of a deployment: unlikely anywhere else in a plan, so replaced blindly.
PLACEHOLDERS = {"prefix": "vcplanprefixz9", "job_name": "vcplanjobz9", "bootstrap": "vcplanbootstrapz9:1"}
# The watermark floor's stand-in (ms; in 2251): the planner keeps the floor a literal of its own
# wherever the SQL uses it (tests/unit/test_job_plans.py plans two floors and compares).
FLOOR_PLACEHOLDER = 8_888_888_888_888


def plans_dir(settings: Settings) -> Path:
    return settings.state_dir / "flink" / "plans"


def prune(folder: Path, keep: int = KEPT_PLANS) -> list[Path]:
    """Remove all but the `keep` plans last used (their files' modification times); returns those removed."""
    plans = sorted(folder.glob("*.json"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in plans[keep:]:
        old.unlink(missing_ok=True)
    return plans[keep:]


def _template(settings: Settings) -> Settings:
    return replace(settings, topics=Topics(prefix=PLACEHOLDERS["prefix"]), job_name=PLACEHOLDERS["job_name"],
                   kafka_bootstrap=PLACEHOLDERS["bootstrap"])


def _json_text(value: str) -> str:
    """`value` as it stands inside a JSON string."""
    return json.dumps(value)[1:-1]


def fill(plan_json: str, settings: Settings, watermark_floor: int | None = None) -> str:
    """A plan planned with the stand-ins, for `settings`' deployment (and its watermark floor)."""
    values = {"prefix": settings.topics.prefix, "job_name": settings.job_name, "bootstrap": settings.kafka_bootstrap}
    for name, placeholder in PLACEHOLDERS.items():
        plan_json = plan_json.replace(placeholder, _json_text(values[name]))
    if watermark_floor is not None:
        plan_json = plan_json.replace(str(FLOOR_PLACEHOLDER), str(int(watermark_floor)))
    return plan_json


def templated(job_options: dict) -> dict:
    """The job's options as they are planned: a watermark floor by its stand-in."""
    if job_options.get("watermark_floor") is None:
        return job_options
    return {**job_options, "watermark_floor": FLOOR_PLACEHOLDER}


def plan_key(statements: list[str], jars: list[Path], table_options: dict[str, str] | None = None) -> str:
    """The plan's name: the job's SQL (with the stand-ins), the planner's options (`table.*`),
    Flink's version, our jars' bytes."""
    from pyflink.version import __version__ as flink_version

    digest = hashlib.sha256(f"{PLAN_FORMAT}\n{flink_version}\n".encode())
    digest.update(json.dumps(sorted((table_options or {}).items())).encode())
    for statement in statements:
        digest.update(statement.encode() + b"\0")
    for jar in jars:
        digest.update(jar.name.encode() + b"\0" + hashlib.sha256(jar.read_bytes()).digest())
    return digest.hexdigest()[:32]


def compiled(t_env, settings: Settings, bounded: bool, job_options: dict):
    """The job (`rollup_job.job_statements(settings, bounded, **job_options)`) as a plan ready to
    execute in t_env: loaded from the state folder if it was planned before, else planned now (in
    t_env, its temporary tables and views dropped again afterwards) and kept."""
    from pyflink.table import CompiledPlan, PlanReference

    from pipelines.stream.job_environment import job_jars, register_functions
    from pipelines.stream.rollup_job import job_statements, statement_set

    ddl, inserts = job_statements(_template(settings), bounded, **templated(job_options))
    options = {k: v for k, v in t_env.get_config().get_configuration().to_dict().items() if k.startswith("table.")}
    path = plans_dir(settings) / f"{plan_key(ddl + inserts, job_jars(settings), options)}.json"
    try:
        plan_json = path.read_text()
        os.utime(path)  # last used now: `prune` keeps it (touch() would make a pruned one anew, empty)
    except FileNotFoundError:  # never planned, or pruned by another start meanwhile
        plan_json = None
    if plan_json is not None:
        register_functions(t_env)
        log.info("the job's plan: %s (planned before)", path.name)
    else:
        plan_json = statement_set(t_env, ddl, inserts).compile_plan().as_json_string()
        for statement in reversed(ddl):  # the stand-ins' tables go: the plan carries the real ones
            if created := re.match(r"\s*CREATE ((?:TEMPORARY )?(?:TABLE|VIEW)) (\S+)", statement):
                t_env.execute_sql(f"DROP {created.group(1)} {created.group(2)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_text(plan_json)
        part.replace(path)  # whole or not at all, should two jobs plan it at once
        prune(path.parent)
        log.info("the job's plan: %s (planned now, kept for the next start)", path.name)
    plan_json = fill(plan_json, settings, job_options.get("watermark_floor"))
    # PyFlink's own load_plan hands the Java table environment where CompiledPlan wants PyFlink's.
    return CompiledPlan(t_env._j_tenv.loadPlan(PlanReference.from_json_string(plan_json)._j_plan_reference), t_env)
