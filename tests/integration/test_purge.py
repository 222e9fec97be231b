"""A purge is never undone: purged tasks end REVOKED and the reconciler leaves them be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import appliance
from appliance.broker.purge import PURGED_REASON
from tests.helpers.processes import run_cli, wait_until
from tests.helpers.redis_server import RedisServer

CELERY = str(Path(sys.executable).with_name("celery"))


def _reconcile(env: dict[str, str]) -> dict[str, Any]:
    result = run_cli(env, "tasks", "reconcile", "--min-age", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_celery_purge_is_not_undone_by_the_reconciler(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    """Given tasks waiting with no worker, when Celery's own `celery purge` deletes them
    and the reconciler runs past its min age, then their records end REVOKED as purged,
    and nothing is queued again."""
    ids = [appliance.submit("demo.add", args=[i, i]) for i in range(5)]
    assert clean_redis.client().llen("default") == 5

    purged = subprocess.run(
        [CELERY, "-A", "appliance.celery_app:app", "purge", "-Q", "default", "-f"],
        env=api_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert purged.returncode == 0, purged.stderr
    assert "Purged 5 messages" in purged.stdout
    assert clean_redis.client().llen("default") == 0

    def found() -> dict[str, Any] | None:
        report = _reconcile(api_env)
        return report if report["purged"] else None

    report = wait_until(
        found,
        30,
        "a reconciler run that finds the purged tasks",
    )
    assert sorted(report["purged"]) == sorted(ids) and report["republished"] == []
    for task_id in ids:
        record = appliance.get_task(task_id)
        assert record is not None
        assert (record["status"], record["error"]) == ("REVOKED", PURGED_REASON)
    again = _reconcile(api_env)
    assert (again["pending"], again["republished"]) == (0, [])
    assert clean_redis.client().llen("default") == 0


def test_appliance_queues_purge_marks_the_records_at_once(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    """Given waiting tasks, when `appliance queues purge` deletes them, then their records
    are REVOKED as purged right away and the ids are remembered for the reconciler."""
    ids = [appliance.submit("demo.add", args=[1, 2]) for _ in range(3)]
    result = run_cli(api_env, "queues", "purge", "default", "--yes")
    assert result.returncode == 0, result.stderr
    assert "purged 3 message(s) from queue default (3 task(s) marked REVOKED)" in result.stdout
    assert {(appliance.get_task(i) or {}).get("status") for i in ids} == {"REVOKED"}
    remembered = clean_redis.client().zrange("appliance:purged", 0, -1)
    assert sorted(i.decode() for i in remembered) == sorted(ids)
