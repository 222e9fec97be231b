"""Operator actions against real workers: retry failed work, revoke (persisted), purge records."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

import appliance
from appliance import api
from appliance.config.settings import get_settings
from appliance.records import store
from appliance.records.db import session_scope
from appliance.records.models import TaskRecord
from tests.helpers.processes import run_cli, wait_until
from tests.integration import probe_tasks
from tests.integration.conftest import WorkerFactory


def _status(task_id: str) -> str | None:
    return (appliance.get_task(task_id) or {}).get("status")


def test_retry_republishes_a_failure_with_its_original_arguments(
    api_env: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    env = dict(api_env, APPLIANCE_TASK_MODULES="tests.integration.probe_tasks")
    start_worker(env, "-c", "1")
    needed = tmp_path / "input.txt"
    task_id = appliance.submit(probe_tasks.needs_file.name, args=[str(needed)])
    wait_until(lambda: _status(task_id) == "FAILURE", 30, "the first attempt to fail")
    needed.write_text("fixed")
    result = run_cli(env, "tasks", "retry", task_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == task_id  # same id: the record tells the whole story
    assert api.wait(task_id, 30) == "fixed"
    record = appliance.get_task(task_id)
    assert record is not None and (record["status"], record["result"]) == ("SUCCESS", "fixed")
    refused = run_cli(env, "tasks", "retry", task_id)
    assert refused.returncode == 1 and "already succeeded (SUCCESS)" in refused.stderr


def test_retry_failed_by_name(api_env: dict[str, str], start_worker: WorkerFactory) -> None:
    start_worker(api_env, "-c", "2")
    failing = [appliance.submit("demo.calculate", args=[1, 2, "pow"]) for _ in range(3)]
    wait_until(lambda: all(_status(t) == "FAILURE" for t in failing), 30, "three failures")
    result = run_cli(
        api_env, "tasks", "retry", "--failed", "--name", "demo.calculate", "--since", "1h"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(failing)
    assert "retried 3 task(s)" in result.stderr


def test_revoke_of_a_queued_task_is_honoured_by_a_worker_that_starts_later(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    doomed = appliance.submit("demo.add", args=[1, 1])
    result = run_cli(api_env, "tasks", "revoke", doomed)
    assert result.returncode == 0, result.stderr
    assert _status(doomed) == "REVOKED"
    start_worker(api_env, "-c", "1")  # started after the revoke
    after = appliance.submit("demo.add", args=[2, 2])
    assert api.wait(after, 30) == 4  # the queue was drained past the revoked one
    record = appliance.get_task(doomed)
    assert record is not None and record["status"] == "REVOKED" and record["result"] is None


def test_revoke_terminate_kills_a_running_task(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    worker = start_worker(api_env, "-c", "1")
    task_id = appliance.submit("demo.sleep", args=[60])
    wait_until(lambda: _status(task_id) == "STARTED", 30, "the task to start")
    assert run_cli(api_env, "tasks", "revoke", task_id, "--terminate").returncode == 0
    wait_until(lambda: _status(task_id) == "REVOKED", 30, "REVOKED")
    assert api.wait(appliance.submit("demo.add", args=[3, 3]), 30) == 6  # the child was replaced
    assert worker.proc.poll() is None


def test_purge_old_records_asks_first_and_keeps_recent_ones(api_env: dict[str, str]) -> None:
    url = get_settings().effective_database_url
    for i in range(5):
        store.record_published(
            url, task_id=f"p{i}", name="demo.add", args=[], kwargs={}, queue="default"
        )
        store.record_succeeded(url, task_id=f"p{i}", name="demo.add", result=i)
    with session_scope(url) as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id.in_(["p0", "p1", "p2"]))
            .values(created_at=store.now() - timedelta(days=40))
        )
    unconfirmed = run_cli(api_env, "tasks", "purge", "--older-than", "30d")
    assert unconfirmed.returncode == 64, unconfirmed.stderr  # no terminal, no --yes
    assert "pass --yes to confirm without a terminal" in unconfirmed.stderr
    assert len(store.list_records(url)) == 5
    done = run_cli(api_env, "tasks", "purge", "--older-than", "30d", "--yes")
    assert done.returncode == 0 and "deleted 3 task record(s)" in done.stdout
    assert {r["id"] for r in store.list_records(url)} == {"p3", "p4"}
    bad = run_cli(api_env, "tasks", "purge", "--older-than", "soon", "--yes")
    assert bad.returncode == 2
