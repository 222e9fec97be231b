"""A plain Celery client (no appliance import, Celery's defaults) against a default install.

Given a real redis-server and a real `appliance worker` with the default settings, when a
client that knows only Celery sends to Celery's default queue `celery`, then it gets its
result, and the task's record (which no publisher wrote) says it was created no later than
it started. Given a queue list no worker group consumes, `appliance health` warns (exit 1)
with the fix, and `appliance queues` shows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.records import store
from tests.helpers.processes import is_node_of, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server
from tests.integration.conftest import WorkerFactory

# Run with `python -I -c`: no appliance import, no APPLIANCE_* setting, Celery's defaults
# (queue "celery", JSON, protocol 2). argv: broker, backend, send_task options, wait?
STOCK_CLIENT = """
import json, sys
from celery import Celery

app = Celery(broker=sys.argv[1], backend=sys.argv[2])
result = app.send_task("demo.add", args=[2, 3], **json.loads(sys.argv[3]))
value = result.get(timeout=20) if sys.argv[4] == "wait" else None
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "appliance")
print(json.dumps({"id": result.id, "value": value, "appliance_modules": loaded}))
"""


def stock_client(server: RedisServer, *, wait: bool, **options: Any) -> dict[str, Any]:
    """Send demo.add(2, 3) from a separate process that imports only Celery."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", STOCK_CLIENT, server.broker_url, server.backend_url,
         json.dumps(options), "wait" if wait else "send"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sent: dict[str, Any] = json.loads(done.stdout)
    assert sent["appliance_modules"] == []
    return sent


def final_record(url: str, task_id: str) -> dict[str, Any]:
    """The record once it is final (the consumers' journal lands within ~0.1 s)."""
    record: dict[str, Any] = wait_until(
        lambda: (r := store.get_record(url, task_id)) and r["status"] == "SUCCESS" and r,
        20,
        f"the SUCCESS record of {task_id}",
    )
    return record


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


@pytest.mark.parametrize("topology", ["consumers", "prefork"])
def test_a_plain_celery_client_gets_its_result_from_a_default_install(
    appliance_env: dict[str, str],
    start_worker: WorkerFactory,
    clean_redis: RedisServer,
    topology: str,
) -> None:
    env = dict(appliance_env, APPLIANCE_WORKER_TOPOLOGY=topology)
    url = env["APPLIANCE_DATABASE_URL"]
    # Before any worker runs: a stock client's task waits in Redis, and so does one sent by
    # an appliance publisher that writes no record (only its enqueued_at header says when).
    backlog = stock_client(clean_redis, wait=False)
    before = time.time()
    headed = run_cli(dict(env, APPLIANCE_RECORDS_ENABLED="false"), "submit", "demo.add",
                     "--args", "[1, 1]")  # fmt: skip
    after = time.time()
    assert headed.returncode == 0, headed.stderr
    assert clean_redis.client().llen("celery") == 1

    start_worker(env, "-c", "1")
    sent = stock_client(clean_redis, wait=True)
    assert sent["value"] == 5

    for task_id in (backlog["id"], sent["id"]):
        record = final_record(url, task_id)
        assert (record["name"], record["result"], record["queue"]) == ("demo.add", 5, "celery")
        assert is_node_of("default", record["worker"]), record["worker"]
        # No PENDING record existed: created when it started (it carries no publish time).
        assert record["created_at"] <= record["started_at"] <= record["finished_at"], record
    record = final_record(url, headed.stdout.strip())
    created = _at(record["created_at"]).timestamp()
    assert before - 0.01 <= created <= after + 0.01, (before, record, after)
    assert _at(record["created_at"]) < _at(record["started_at"])  # waited for the worker


@pytest.fixture
def tuned_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, tuned as the appliance wants it (so that health's
    only complaint is the one under test)."""
    with local_redis_server(
        tmp_path / "redis",
        "--maxmemory", "256mb", "--appendonly", "yes", "--maxmemory-policy", "noeviction",
    ) as (server, _):  # fmt: skip
        yield server


def test_a_queue_no_worker_group_consumes_warns_with_the_fix(
    appliance_env: dict[str, str], start_worker: WorkerFactory, tuned_redis: RedisServer
) -> None:
    # An install whose env file predates the "celery" queue in the default group.
    env = dict(
        appliance_env,
        APPLIANCE_BROKER_URL=tuned_redis.broker_url,
        APPLIANCE_RESULT_BACKEND=tuned_redis.backend_url,
        APPLIANCE_WORKER_GROUPS="default=default,high,low",
        APPLIANCE_HEALTH_EXPECT_BEAT="false",
    )
    worker = start_worker(env, "-c", "1")
    healthy = run_cli(env, "health", timeout=20)
    assert healthy.returncode == 0, healthy.stdout

    stock_client(tuned_redis, wait=False)  # Celery's default queue: configured, unconsumed
    stock_client(tuned_redis, wait=False, queue="reports")  # a queue the appliance never heard of
    stock_client(tuned_redis, wait=False, queue="reports", priority=9)

    health = run_cli(env, "health", timeout=20)
    assert health.returncode == 1, health.stdout + health.stderr
    lines = health.stdout.splitlines()
    assert lines[0].startswith("APPLIANCE WARNING - ")
    assert "'queue_celery_unconsumed'=1" in lines[0] and "'queue_reports_unconsumed'=2" in lines[0]
    assert (
        "WARNING: queue 'celery' has 1 message(s) and no worker group consumes it; fix: add it "
        "to APPLIANCE_WORKER_GROUPS (e.g. default=default,high,low,celery), then restart "
        "appliance-worker@default"
    ) in lines
    (reports,) = [line for line in lines[1:] if "queue 'reports'" in line]
    assert reports.startswith("WARNING: queue 'reports' has 2 message(s) and no worker group")
    assert "APPLIANCE_WORKER_GROUPS" in reports and "APPLIANCE_QUEUES" in reports
    as_json = json.loads(run_cli(env, "health", "--json", timeout=20).stdout)
    checks = {c["name"]: c for c in as_json["checks"]}
    assert checks["queue_reports_unconsumed"]["status"] == "WARNING"
    assert checks["queue_reports_unconsumed"]["value"] == 2

    shown = run_cli(env, "queues")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:] if line}
    assert rows["celery"][1] == "1" and rows["celery"][-1] == "(none)"
    assert rows["reports"][1] == "2" and "p9:1" in rows["reports"]
    assert rows["default"][-1] == "default"
    assert "appliance: warning: queue 'celery' has 1 message(s)" in shown.stderr
    assert "appliance: warning: queue 'reports' has 2 message(s)" in shown.stderr
    data = json.loads(run_cli(env, "queues", "--json").stdout)
    assert len(data["warnings"]) == 2
    by_name = {q["queue"]: q for q in data["queues"]}
    assert by_name["reports"]["configured"] is False and by_name["reports"]["consumed_by"] == []

    # A worker started on that queue by hand (in its place: one node name) consumes it;
    # the warning goes once the queue drains.
    assert worker.terminate() == 0
    start_worker(env, "-Q", "celery", "-c", "1", name="adhoc")
    wait_until(lambda: tuned_redis.client().llen("celery") == 0, 30, "the celery queue drained")
    health = run_cli(env, "health", timeout=20)
    assert "queue 'celery'" not in health.stdout and "queue 'reports'" in health.stdout
