"""Fault injection: no accepted task is lost when the worker or Redis dies mid-load.

The ledger is the task records (SQLite, outside the broker under test); duplicate
executions are counted by the probe task itself. Invariant: every accepted id ends
SUCCESS; lost = 0. Figures (recovery seconds, duplicates) are attached to the report.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from appliance.records import store
from tests.helpers.ledger import all_succeeded as _done
from tests.helpers.ledger import statuses as _statuses
from tests.helpers.load import publish_batch
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server

LOAD = 200
FAST_RECOVERY = {
    # Small limits so a killed worker's tasks come back within seconds.
    "APPLIANCE_VISIBILITY_TIMEOUT": "10",
    "APPLIANCE_TASK_TIME_LIMIT": "5",
    "APPLIANCE_TASK_SOFT_TIME_LIMIT": "4",
    "APPLIANCE_TASK_MODULES": "tests.integration.probe_tasks",
}


def _load_until_a_quarter_is_done(env: dict[str, str], url: str) -> list[str]:
    """Publish the load, then wait until the fault lands mid-load: a quarter is SUCCESS."""
    ids = publish_batch(env, LOAD, seconds=0.05)
    wait_until(
        lambda: list(_statuses(url, ids).values()).count("SUCCESS") >= LOAD // 4,
        60,
        "a quarter done",
    )
    return ids


def _duplicates(server: RedisServer, ids: list[str]) -> int:
    counts = server.client().hgetall("appliance-test:tally")
    return sum(int(v) - 1 for v in counts.values())


@pytest.mark.timeout(300)
def test_worker_sigkill_mid_load_then_restart_loses_nothing(
    api_env: dict[str, str],
    clean_redis: RedisServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    env = dict(api_env, **FAST_RECOVERY)
    url = env["APPLIANCE_DATABASE_URL"]
    worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker-1.log")
    worker.wait_for_output(" ready.")
    ids = _load_until_a_quarter_is_done(env, url)
    worker.proc.send_signal(signal.SIGKILL)  # the main process dies mid-load...
    worker.kill()  # ...and, as systemd would, nothing of its cgroup survives
    killed_at = time.monotonic()
    restarted = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker-2.log")
    try:
        restarted.wait_for_output(" ready.")
        wait_until(_done(url, ids), 120, f"all {LOAD} tasks SUCCESS after the restart")
    finally:
        restarted.terminate()
    statuses = _statuses(url, ids)
    assert [t for t, s in statuses.items() if s != "SUCCESS"] == []  # lost = 0
    record_property("tasks", LOAD)
    record_property("lost", 0)
    record_property("recovery_seconds", round(time.monotonic() - killed_at, 1))
    record_property("duplicates", _duplicates(clean_redis, ids))


@pytest.fixture
def aof_redis(tmp_path: Path) -> tuple[Path, list[str]]:
    """Arguments for a redis-server with AOF on, restartable on the same port and dir."""
    return tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "everysec"]


@pytest.mark.timeout(300)
def test_redis_restart_with_aof_during_load_loses_nothing_and_the_worker_resumes(
    api_env: dict[str, str],
    tmp_path: Path,
    aof_redis: tuple[Path, list[str]],
    record_property: Callable[[str, object], None],
) -> None:
    workdir, extra = aof_redis
    with local_redis_server(workdir, *extra) as (server, proc):
        env = dict(
            api_env,
            **FAST_RECOVERY,
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
        )
        url = env["APPLIANCE_DATABASE_URL"]
        worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker.log")
        try:
            worker.wait_for_output(" ready.")
            ids = _load_until_a_quarter_is_done(env, url)
            # A graceful Redis restart (SHUTDOWN writes the AOF), same port, same data dir.
            args = list(proc.args)  # type: ignore[arg-type]
            proc.terminate()
            proc.wait(30)
            stopped_at = time.monotonic()
            restarted = subprocess.Popen(args, start_new_session=True)
            try:
                wait_until(
                    _done(url, ids), 180, f"all {LOAD} tasks SUCCESS after the Redis restart"
                )
                recovered = round(time.monotonic() - stopped_at, 1)
                assert worker.proc.poll() is None, "the worker kept running (no restart needed)"
                # And it still consumes new work on the new connection.
                more = publish_batch(env, 5)
                wait_until(_done(url, more), 60, "new tasks after the restart")
                record_property("tasks", LOAD)
                record_property("lost", 0)
                record_property("recovery_seconds", recovered)
                record_property("duplicates", _duplicates(server, ids))
            finally:
                restarted.terminate()
                restarted.wait(30)
        finally:
            worker.terminate()
    assert [t for t, s in _statuses(url, ids).items() if s != "SUCCESS"] == []  # lost = 0


def test_redis_at_maxmemory_refuses_submits_clearly_and_health_warned_first(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    with local_redis_server(tmp_path / "redis", "--maxmemory-policy", "noeviction") as (server, _):
        env = dict(
            api_env,
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
        )
        client = server.client()
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used + 2 * 1024 * 1024))
        ballast = b"x" * 64 * 1024
        filled = 0
        # Fill towards the limit; health must turn WARNING/CRITICAL before writes fail.
        statuses = []
        while True:
            try:
                client.set(f"ballast:{filled}", ballast)
            except redis.exceptions.ResponseError as exc:
                assert "maxmemory" in str(exc)
                break
            filled += 1
            if filled % 8 == 0:
                statuses.append(health_memory_status(env))
        assert {"WARNING", "CRITICAL"} & set(statuses), statuses
        refused = run_cli(env, "submit", "demo.add", "--args", "[1, 2]")
        assert refused.returncode == 69
        assert len(refused.stderr.strip().splitlines()) == 1 and "maxmemory" in refused.stderr
        assert store.list_records(env["APPLIANCE_DATABASE_URL"]) == []  # no PENDING left behind
        assert client.llen("default") == 0
        # Memory freed: accepted again.
        client.config_set("maxmemory", str(256 * 1024 * 1024))
        accepted = run_cli(env, "submit", "demo.add", "--args", "[1, 2]")
        assert accepted.returncode == 0 and client.llen("default") == 1


def health_memory_status(env: dict[str, str]) -> str:
    import json

    result = run_cli(env, "health", "--json")
    return next(c["status"] for c in json.loads(result.stdout)["checks"] if c["name"] == "memory")
