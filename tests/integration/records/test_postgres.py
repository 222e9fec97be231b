"""Task records on a real PostgreSQL: migrations, record writes, and a worker using it."""

from __future__ import annotations

import json

import pytest

from appliance.records import schema, store
from tests.helpers.processes import run_cli
from tests.integration.conftest import WorkerFactory

pytestmark = pytest.mark.postgres


def test_schema_upgrade_and_records_on_postgres(postgres_url: str) -> None:
    schema.upgrade(postgres_url)
    assert schema.schema_state(postgres_url).is_current
    assert schema.upgrade(postgres_url).is_current  # a second run changes nothing
    store.record_published(
        postgres_url, task_id="pg-1", name="demo.add", args=[1, 2], kwargs={}, queue="default"
    )
    store.record_published(
        postgres_url, task_id="pg-1", name="demo.add", args=[1, 2], kwargs={}, queue="default"
    )
    store.record_started(
        postgres_url,
        task_id="pg-1",
        name="demo.add",
        args=[1, 2],
        kwargs={},
        queue="default",
        worker="w@h",
        retries=0,
    )
    store.record_succeeded(postgres_url, task_id="pg-1", name="demo.add", result={"sum": 3})
    record = store.get_record(postgres_url, "pg-1")
    assert record is not None
    assert (record["status"], record["result"], record["worker"]) == ("SUCCESS", {"sum": 3}, "w@h")
    assert store.count_by_status(postgres_url)["SUCCESS"] >= 1


def test_a_worker_keeps_its_records_in_postgres(
    appliance_env: dict[str, str], start_worker: WorkerFactory, postgres_url: str
) -> None:
    env = dict(appliance_env, APPLIANCE_DATABASE_URL=postgres_url)
    assert run_cli(env, "db", "upgrade").returncode == 0
    start_worker(env, "-c", "2")
    submitted = run_cli(
        env, "submit", "demo.progress", "--kwargs", '{"steps": 3, "delay": 0.05}', "--wait", "30"
    )
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stderr.split(" as ")[-1].strip()
    record = json.loads(run_cli(env, "tasks", "show", task_id, "--json").stdout)
    assert (record["status"], record["progress"], record["result"]) == (
        "SUCCESS",
        100,
        {"steps": 3},
    )


def test_unreachable_postgres_is_one_line_with_its_exit_code(appliance_env: dict[str, str]) -> None:
    from tests.helpers.processes import free_port

    env = dict(
        appliance_env,
        APPLIANCE_DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{free_port()}/appliance",
    )
    result = run_cli(env, "tasks", "list")
    assert result.returncode == 74
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unreachable" in result.stderr and ":pw@" not in result.stderr
