"""pipelines.stream.job_plans without a JVM: the stand-ins, how a plan is filled, what keys it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pipelines.config import Settings, Topics
from pipelines.stream import job_plans
from pipelines.stream.rollup_job import job_statements


def test_the_jobs_sql_planned_with_the_stand_ins_names_no_deployment_of_its_own():
    settings = replace(Settings(), topics=Topics(prefix="night_ab12"), job_name="rollup-job",
                       kafka_bootstrap="127.0.0.1:19092")
    ddl, inserts = job_statements(job_plans._template(settings), bounded=True)
    sql = "\n".join(ddl + inserts)
    assert "night_ab12" not in sql and "127.0.0.1:19092" not in sql and "rollup-job" not in sql
    assert all(placeholder in sql for placeholder in job_plans.PLACEHOLDERS.values())


def test_a_plan_is_filled_with_the_deployments_values_json_escaped():
    stand_in = job_plans.PLACEHOLDERS
    plan = json.dumps({"topic": f"{stand_in['prefix']}.views", "group": f"{stand_in['prefix']}.{stand_in['job_name']}",
                       "servers": stand_in["bootstrap"]})
    settings = replace(Settings(), topics=Topics(prefix='odd"prefix'), job_name="job", kafka_bootstrap="h:1,h:2")
    assert json.loads(job_plans.fill(plan, settings)) == {
        "topic": 'odd"prefix.views', "group": 'odd"prefix.job', "servers": "h:1,h:2"}


def test_other_sql_or_other_jars_make_another_plan(tmp_path):
    jar = tmp_path / "functions.jar"
    jar.write_bytes(b"one build")
    key = job_plans.plan_key(["CREATE TABLE t", "INSERT INTO t"], [jar])
    assert key == job_plans.plan_key(["CREATE TABLE t", "INSERT INTO t"], [jar])
    assert key != job_plans.plan_key(["CREATE TABLE t", "INSERT INTO u"], [jar])
    jar.write_bytes(b"another build")
    assert key != job_plans.plan_key(["CREATE TABLE t", "INSERT INTO t"], [jar])


def test_only_the_plans_last_used_are_kept(tmp_path):
    import os

    for age in range(20):
        plan = tmp_path / f"plan{age:02d}.json"
        plan.write_text("{}")
        os.utime(plan, (1_800_000_000 - age, 1_800_000_000 - age))
    removed = job_plans.prune(tmp_path, keep=16)
    assert sorted(p.name for p in removed) == ["plan16.json", "plan17.json", "plan18.json", "plan19.json"]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [f"plan{age:02d}.json" for age in range(16)]


@pytest.mark.e2e
def test_a_plan_planned_for_the_floors_stand_in_is_the_plan_of_any_floor_once_filled():
    """The planner neither folds the floor into another literal nor uses its digits elsewhere: the
    plan of the stand-in, filled with a floor, is the plan planned for that floor (a JVM: ~20 s)."""
    from pipelines.stream.job_environment import table_environment
    from pipelines.stream.rollup_job import statement_set

    settings = Settings.from_env()
    floor = 1_723_511_459_999  # 2024-08-13 01:10:59.999 UTC

    def planned(watermark_floor):
        t_env = table_environment(settings)
        ddl, inserts = job_statements(settings, bounded=False, watermark_floor=watermark_floor)
        return statement_set(t_env, ddl, inserts).compile_plan().as_json_string()

    def renumbered(plan_json):
        """The plan with its operators numbered from 0: a second planning in one JVM numbers on."""
        plan = json.loads(plan_json)
        ids = {node["id"]: n for n, node in enumerate(plan["nodes"])}
        for node in plan["nodes"]:
            node["id"] = ids[node["id"]]
        for edge in plan["edges"]:
            edge["source"], edge["target"] = ids[edge["source"]], ids[edge["target"]]
        return plan

    stand_in = planned(job_plans.FLOOR_PLACEHOLDER)
    assert str(job_plans.FLOOR_PLACEHOLDER) in stand_in
    assert renumbered(job_plans.fill(stand_in, settings, floor)) == renumbered(planned(floor))
