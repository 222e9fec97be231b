"""Rate limits and time limits, as the records show them.

Given a real worker: a rate-limited task starts no faster than its rate; a task past its
soft limit ends FAILURE with SoftTimeLimitExceeded; a task past its hard limit is
killed, ends FAILURE with TimeLimitExceeded, and its pool child is replaced while the
worker keeps serving.
"""

from __future__ import annotations

import json
from datetime import datetime

import appliance
from appliance import api
from tests.helpers.processes import run_cli
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _record(env: dict[str, str], task_id: str) -> dict[str, object]:
    shown = run_cli(env, "tasks", "show", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record: dict[str, object] = json.loads(shown.stdout)
    return record


def _submitted_id(stderr: str) -> str:
    return stderr.split("submitted ")[1].split(" as ")[1].split()[0]


def test_a_rate_limited_task_starts_no_faster_than_its_rate(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """demo.rate_limited has rate_limit='10/m': one start per 6 s on a worker."""
    start_worker(api_env, "-c", "2")
    ids = [appliance.submit("demo.rate_limited", args=[i]) for i in range(3)]
    assert [api.wait(task_id, 90) for task_id in ids] == [0, 1, 2]
    starts = sorted(
        datetime.fromisoformat(str((appliance.get_task(t) or {})["started_at"])) for t in ids
    )
    # Two intervals of 6 s; a lower bound only (the bucket never lets them run sooner).
    assert (starts[-1] - starts[0]).total_seconds() >= 10, starts


def test_soft_and_hard_time_limits_end_in_failure_records(
    appliance_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    worker = start_worker(appliance_env, "-c", "1")
    before = run_cli(appliance_env, "submit", "appliance.canary", "--wait", "60")
    assert before.returncode == 0, before.stderr

    soft = run_cli(
        appliance_env,
        "submit",
        "demo.sleep",
        "--args",
        "[60]",
        "--soft-time-limit",
        "1",
        "--wait",
        "60",
    )
    assert soft.returncode == 1
    record = _record(appliance_env, _submitted_id(soft.stderr))
    assert record["status"] == "FAILURE"
    assert "SoftTimeLimitExceeded" in str(record["error"])

    # demo.with_cleanup catches the soft limit and cleans up for longer than the gap to
    # the hard limit: the child is killed.
    hard = run_cli(
        appliance_env,
        "submit",
        "demo.with_cleanup",
        "--args",
        "[60, 60]",
        "--soft-time-limit",
        "1",
        "--time-limit",
        "3",
        "--wait",
        "60",
    )
    assert hard.returncode == 1
    record = _record(appliance_env, _submitted_id(hard.stderr))
    assert record["status"] == "FAILURE"
    assert "TimeLimitExceeded" in str(record["error"])
    assert "SoftTimeLimitExceeded" not in str(record["error"])

    after = run_cli(appliance_env, "submit", "appliance.canary", "--wait", "60")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["pid"] != json.loads(before.stdout)["pid"]  # replaced
    assert worker.proc.poll() is None
    assert "Hard time limit (3.0s) exceeded" in worker.output()
    assert clean_redis.client().hlen("unacked") == 0  # acked: it will not run again
