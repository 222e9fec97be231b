"""Secrets from the env file never show: not in config show, status, health, logs or `ps`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from tests.helpers.processes import ApplianceProcess, run_cli
from tests.helpers.redis_server import local_redis_server


def test_no_secret_in_outputs_logs_or_process_listings(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    password = "s3cret-" + secrets.token_hex(8)
    db_password = "dbpw-" + secrets.token_hex(8)
    with local_redis_server(tmp_path / "r", password=password) as (server, _):
        env_file = tmp_path / "appliance.env"
        env_file.write_text(
            f"APPLIANCE_BROKER_URL=redis://:{password}@127.0.0.1:{server.port}/0\n"
            f"APPLIANCE_RESULT_BACKEND=redis://:{password}@127.0.0.1:{server.port}/1\n"
        )
        env_file.chmod(0o640)
        env = {
            k: v
            for k, v in appliance_env.items()
            if k not in ("APPLIANCE_BROKER_URL", "APPLIANCE_RESULT_BACKEND")
        }
        env["APPLIANCE_ENV_FILE"] = str(env_file)
        env["APPLIANCE_HEALTH_EXPECT_BEAT"] = "false"
        worker = ApplianceProcess(["worker", "-c", "1"], env, tmp_path / "worker.log")
        try:
            worker.wait_for_output(" ready.")
            submitted = run_cli(env, "submit", "demo.add", "--args", "[1, 2]", "--wait", "30")
            assert submitted.stdout.strip() == "3", submitted.stderr
            outputs = {
                "config show": run_cli(env, "config", "show"),
                "config show --json": run_cli(env, "config", "show", "--json"),
                "status --json": run_cli(env, "status", "--json"),
                "health --json": run_cli(env, "health", "--json"),
                "queues": run_cli(env, "queues"),
            }
            ps = subprocess.run(
                ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
            )
            bad_db = run_cli(
                dict(env, APPLIANCE_DATABASE_URL=f"postgresql://u:{db_password}@127.0.0.1:1/x"),
                "tasks",
                "list",
            )
        finally:
            worker.terminate()
    health = json.loads(outputs["health --json"].stdout)
    # It authenticated with the password from the env file: Redis and the worker are seen.
    assert {c["name"]: c["status"] for c in health["checks"]}["workers_default"] == "OK"
    for name, result in outputs.items():
        assert password not in result.stdout + result.stderr, name
    assert password not in ps.stdout
    assert password not in worker.output()
    assert db_password not in bad_db.stdout + bad_db.stderr and bad_db.returncode == 74
    assert os.stat(env_file).st_mode & 0o777 == 0o640
