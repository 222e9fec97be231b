"""End to end: real redis-server, real `appliance worker` processes, real SQLite records.

Given a worker, when work is submitted through the CLI or the Python API, then every
demo task ends in the right state with the right record.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from sqlalchemy import update

import appliance
from appliance import api
from appliance.config.settings import get_settings
from appliance.errors import TaskFailedError
from appliance.records import store
from appliance.records.db import session_scope
from appliance.records.models import TaskRecord
from tests.helpers.processes import is_node_of, run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def test_cli_submit_wait_prints_the_result_and_the_record_shows_success(
    appliance_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(appliance_env, "-c", "2")
    submitted = run_cli(appliance_env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "30")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "5"
    task_id = submitted.stderr.split(" as ")[-1].strip()
    shown = run_cli(appliance_env, "tasks", "show", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["id"], record["status"], record["result"]) == (task_id, "SUCCESS", 5)
    assert is_node_of("default", record["worker"]), record["worker"]
    assert record["started_at"] and record["finished_at"]


def test_demo_tasks_through_the_python_api(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(api_env, "-c", "2")

    progress_id = appliance.submit("demo.progress", kwargs={"steps": 4, "delay": 0.05})
    assert api.wait(progress_id, 30) == {"steps": 4}
    record = appliance.get_task(progress_id)
    assert record is not None
    assert (record["status"], record["progress"]) == ("SUCCESS", 100)
    assert record["progress_message"] == "step 4 of 4"

    flaky_id = appliance.submit("demo.flaky", kwargs={"fail_times": 2})
    assert api.wait(flaky_id, 60) == {"attempts": 3}
    record = appliance.get_task(flaky_id)
    assert record is not None
    assert (record["status"], record["retries"]) == ("SUCCESS", 2)

    calc_id = appliance.submit("demo.calculate", args=[6, 7], kwargs={"operation": "power"})
    with pytest.raises(TaskFailedError, match="unknown operation 'power'"):
        api.wait(calc_id, 30)
    record = appliance.get_task(calc_id)
    assert record is not None
    assert record["status"] == "FAILURE"
    assert record["retries"] == 0  # a ValueError is never retried
    assert "ValueError: unknown operation 'power'" in record["error"]
    assert "Traceback" in record["traceback"]

    mul_id = appliance.submit("demo.calculate", args=[6, 7], kwargs={"operation": "multiply"})
    assert api.wait(mul_id, 30) == 42

    sleep_id = appliance.submit("demo.sleep", args=[0.1])
    noop_id = appliance.submit("demo.noop")
    assert api.wait(sleep_id, 30) == 0.1
    assert api.wait(noop_id, 30) is None


def test_canary_reports_who_ran_it_and_from_which_queue(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    worker = start_worker(api_env, "-c", "1", "-Q", "high")
    task_id = appliance.submit("appliance.canary", queue="high")
    result = api.wait(task_id, 30)
    assert result["queue"] == "high"
    assert is_node_of("default", result["hostname"]), result["hostname"]
    assert result["pid"] != worker.pid  # ran in a pool child or consumer
    assert result["enqueued_at"] is not None
    assert result["enqueued_at"] <= result["started_at"] <= result["finished_at"]


def test_cleanup_deletes_only_old_finished_records(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    url = get_settings().effective_database_url
    for task_id in ("old-done", "old-failed", "old-pending", "new-done"):
        store.record_published(url, task_id=task_id, name="demo.add", args=[], kwargs={}, queue="q")
    for task_id in ("old-done", "new-done"):
        store.record_succeeded(url, task_id=task_id, name="demo.add", result=1)
    store.record_failed(url, task_id="old-failed", name="demo.add", error="E", traceback=None)
    with session_scope(url) as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id.in_(["old-done", "old-failed", "old-pending"]))
            .values(created_at=store.now() - timedelta(days=31))
        )
    start_worker(api_env, "-c", "1")
    assert api.wait(appliance.submit("appliance.cleanup_records"), 30) == 2
    remaining = {r["id"] for r in store.list_records(url, limit=100)}
    assert {"old-pending", "new-done"} <= remaining
    assert not {"old-done", "old-failed"} & remaining


def test_unknown_task_is_refused_and_queues_nothing(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    result = run_cli(api_env, "submit", "no.such.task", "--args", "[1]")
    assert result.returncode == 65
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no.such.task" in result.stderr and "Traceback" not in result.stderr
    assert clean_redis.client().llen("default") == 0
    assert store.list_records(get_settings().effective_database_url) == []


def test_unreachable_broker_fails_fast_and_leaves_no_pending_record(
    api_env: dict[str, str],
) -> None:
    from tests.helpers.processes import free_port

    env = dict(api_env, APPLIANCE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = run_cli(env, "submit", "demo.add", "--args", "[1, 2]", timeout=30)
    assert result.returncode == 69
    assert len(result.stderr.strip().splitlines()) == 1
    assert "APPLIANCE_BROKER_URL" in result.stderr
    assert store.list_records(get_settings().effective_database_url) == []


def test_wait_times_out_with_its_own_exit_code_and_the_task_stays_queued(
    appliance_env: dict[str, str], clean_redis: RedisServer
) -> None:
    result = run_cli(appliance_env, "submit", "demo.noop", "--wait", "0.5")
    assert result.returncode == 75
    assert "did not finish" in result.stderr
    assert clean_redis.client().llen("default") == 1  # accepted, waiting for a worker


def test_tasks_list_filters_by_status_and_name(
    appliance_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(appliance_env, "-c", "2")
    ok = run_cli(appliance_env, "submit", "demo.add", "--args", "[1, 1]", "--wait", "30")
    bad = run_cli(
        appliance_env, "submit", "demo.calculate", "--args", '[1, 1, "x"]', "--wait", "30"
    )
    assert (ok.returncode, bad.returncode) == (0, 1)
    failed = json.loads(
        run_cli(appliance_env, "tasks", "list", "--status", "FAILURE", "--json").stdout
    )
    assert [r["name"] for r in failed] == ["demo.calculate"]
    table = run_cli(appliance_env, "tasks", "list", "--name", "demo.add", "--since", "1h")
    assert (
        table.returncode == 0
        and "demo.add" in table.stdout
        and "demo.calculate" not in table.stdout
    )


def test_console_script_runs(appliance_env: dict[str, str]) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "appliance"
    assert script.exists(), "the console script is installed with the package"
    result = subprocess.run(
        [str(script), "config", "check"],
        env=appliance_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK"


def test_worker_creates_the_schema_of_a_fresh_database(
    appliance_env: dict[str, str], start_worker: WorkerFactory, tmp_path: os.PathLike[str]
) -> None:
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    env = dict(appliance_env, APPLIANCE_DATABASE_URL=fresh)
    start_worker(env, "-c", "1")
    result = run_cli(env, "submit", "demo.add", "--args", "[20, 22]", "--wait", "30")
    assert result.stdout.strip() == "42"
    wait_until(lambda: store.list_records(fresh), 10, "a record in the fresh database")
