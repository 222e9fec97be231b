"""`appliance redis tune|check` on a live redis-server; the worker refuses an evicting one."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.processes import ApplianceProcess, run_cli
from tests.helpers.redis_server import local_redis_server


def test_tune_apply_leaves_redis_safe_for_a_broker(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text("")
    with local_redis_server(tmp_path / "r", "--maxmemory-policy", "allkeys-lru", conf=conf) as (
        server,
        _,
    ):
        env = dict(appliance_env, APPLIANCE_BROKER_URL=server.broker_url)
        dry = run_cli(env, "redis", "tune", "--maxmemory", "256mb")
        assert dry.returncode == 0 and "dry run" in dry.stdout
        assert server.client().config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        applied = run_cli(env, "redis", "tune", "--maxmemory", "256mb", "--apply", "--json")
        assert applied.returncode == 0, applied.stderr
        data = json.loads(applied.stdout)
        assert data["after"] == data["planned"]
        live = server.client().config_get("*")
        assert (live["maxmemory-policy"], live["appendonly"], live["appendfsync"]) == (
            "noeviction",
            "yes",
            "everysec",
        )
        assert int(live["maxmemory"]) == 256 * 1024 * 1024
        # CONFIG REWRITE persisted it (Redis omits values equal to its defaults, e.g. noeviction).
        rewritten = conf.read_text()
        assert "maxmemory 256mb" in rewritten and "appendonly yes" in rewritten
        assert "allkeys-lru" not in rewritten
        check = run_cli(env, "redis", "check")
        assert check.returncode == 0, check.stdout


def test_tune_refuses_an_evicting_policy_with_the_reason(appliance_env: dict[str, str]) -> None:
    result = run_cli(appliance_env, "redis", "tune", "--policy", "allkeys-lru")
    assert result.returncode == 2
    assert "evicts keys" in result.stderr and "lost" in result.stderr


def test_redis_check_names_the_bad_policy(appliance_env: dict[str, str], tmp_path: Path) -> None:
    with local_redis_server(tmp_path / "r", "--maxmemory-policy", "volatile-lru") as (server, _):
        result = run_cli(
            dict(appliance_env, APPLIANCE_BROKER_URL=server.broker_url), "redis", "check"
        )
    assert result.returncode == 2 and "volatile-lru" in result.stdout


def test_worker_refuses_an_evicting_broker_with_exit_78(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    with local_redis_server(tmp_path / "r", "--maxmemory-policy", "allkeys-lru") as (server, _):
        env = dict(appliance_env, APPLIANCE_BROKER_URL=server.broker_url)
        worker = ApplianceProcess(["worker", "-c", "1"], env, tmp_path / "worker.log")
        code = worker.proc.wait(60)
        worker.kill()
    assert code == 78
    lines = [line for line in worker.output().splitlines() if "appliance: error:" in line]
    assert len(lines) == 1 and "allkeys-lru" in lines[0] and "Traceback" not in worker.output()
