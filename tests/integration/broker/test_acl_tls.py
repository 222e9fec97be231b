"""Redis with an ACL user (`+@all -@dangerous`, default user off) and over TLS (rediss://).

Real redis-servers on loopback ports, a real worker, the real CLI. Under the ACL the
@dangerous commands the appliance uses (INFO, CONFIG) are refused: each such refusal is
one line naming the rule to add, and the worker, submit, status and health still work.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.processes import ApplianceProcess, run_cli
from tests.helpers.redis_server import RedisServer, TlsFiles, local_redis_server, make_tls_files
from tests.integration.conftest import WorkerFactory

APP_USER = "appliance"
# The ACL rule docs/redis.md recommends, and the bare `+@all -@dangerous` it is built on.
BARE_RULE = "~* &* +@all -@dangerous"
RECOMMENDED_RULE = "~* &* +@all -@dangerous +info"


def acl_users(admin_password: str, app_password: str, rule: str) -> tuple[str, ...]:
    """The default user off; an admin for the test's own checks; the appliance's user."""
    return (
        "default off",
        f"admin on >{admin_password} ~* &* +@all",
        f"{APP_USER} on >{app_password} {rule}",
    )


def app_env(
    base: dict[str, str], server: RedisServer, password: str, tmp_path: Path
) -> dict[str, str]:
    """Settings for the appliance's ACL user on *server*."""
    env = dict(base)
    env["APPLIANCE_BROKER_URL"] = server.url(0, username=APP_USER, password=password)
    env["APPLIANCE_RESULT_BACKEND"] = server.url(1, username=APP_USER, password=password)
    env["APPLIANCE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'acl-records.db'}"
    env["APPLIANCE_HEALTH_EXPECT_BEAT"] = "false"
    return env


def refused(server: RedisServer) -> set[str]:
    """What Redis refused to the appliance user, from its ACL log (asked as admin)."""
    entries = server.client().acl_log(count=1000)
    return {str(e["object"]) for e in entries if e["username"] == APP_USER}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), result.stderr
    return lines[0]


def checks_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    data = json.loads(result.stdout)
    return {str(c["name"]): c for c in data["checks"]}


def test_acl_user_without_dangerous_commands_runs_tasks_and_degrades_clearly(
    appliance_env: dict[str, str], tmp_path: Path, start_worker: WorkerFactory
) -> None:
    admin_pw, app_pw = secrets.token_hex(8), secrets.token_hex(8)
    users = acl_users(admin_pw, app_pw, BARE_RULE)
    with local_redis_server(
        tmp_path / "redis", password=admin_pw, username="admin", acl_users=users
    ) as (server, _):
        env = app_env(appliance_env, server, app_pw, tmp_path)
        worker = start_worker(env, "-c", "1")
        # The worker's start-up eviction check needs INFO: one warning naming the grant.
        assert f"fix: ACL SETUSER {APP_USER} +info" in worker.output()

        submitted = run_cli(env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "60")
        assert (submitted.returncode, submitted.stdout.strip()) == (0, "5"), submitted.stderr

        # health authenticates as the ACL user (AUTH user pass) and runs every check but
        # the INFO-based ones, which become one WARNING naming the rule to add.
        health = run_cli(env, "health", "--json")
        checks = checks_of(health)
        assert health.returncode == 1, health.stdout
        info = checks["redis_info"]
        assert info["status"] == "WARNING"
        assert f"fix: ACL SETUSER {APP_USER} +info" in str(info["message"])
        assert checks["workers_default"]["status"] == "OK"
        assert checks["redis_latency"]["status"] == "OK"
        assert {n for n, c in checks.items() if c["status"] != "OK"} == {"redis_info"}
        nagios = run_cli(env, "health")
        assert nagios.returncode == 1 and "Traceback" not in nagios.stdout + nagios.stderr
        assert nagios.stdout.startswith("APPLIANCE WARNING - ") and "+info" in nagios.stdout

        status = run_cli(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert "error" not in data and [w["group"] for w in data["workers"]] == ["default"]
        assert data["record_counts"] == {"SUCCESS": 1}

        check = run_cli(env, "redis", "check", "--json")
        assert check.returncode == 1 and "redis_info" in {
            c["name"] for c in json.loads(check.stdout)["checks"]
        }

        # CONFIG is in @dangerous too: `redis tune` is one line naming the grant or the
        # admin route, never a traceback.
        tune = run_cli(env, "redis", "tune")
        assert tune.returncode == 1
        assert f"ACL SETUSER {APP_USER} +config|get" in one_error_line(tune)
        tune_apply = run_cli(env, "redis", "tune", "--apply")
        assert tune_apply.returncode == 1
        line = one_error_line(tune_apply)
        assert "admin user's URL" in line and "--conf-out" in line

        # Nothing else the worker, submit, health, status or the CLI did was refused.
        assert refused(server) == {"info", "config|get"}

        # The documented fix works: with +info, health checks Redis itself again.
        server.client().execute_command("ACL", "SETUSER", APP_USER, "+info")
        granted = checks_of(run_cli(env, "health", "--json"))
        assert "redis_info" not in granted
        assert granted["eviction_policy"]["status"] == "OK"
        assert granted["workers_default"]["status"] == "OK"


def test_acl_user_without_channels_is_named_in_one_line(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    """A user without `&*` (Pub/Sub channels): the worker refuses to start with one line."""
    admin_pw, app_pw = secrets.token_hex(8), secrets.token_hex(8)
    users = acl_users(admin_pw, app_pw, "~* +@all -@dangerous +info")
    with local_redis_server(
        tmp_path / "redis", password=admin_pw, username="admin", acl_users=users
    ) as (server, _):
        env = app_env(appliance_env, server, app_pw, tmp_path)
        worker = ApplianceProcess(["worker", "-c", "1"], env, tmp_path / "worker.log")
        try:
            code = worker.proc.wait(120)
        finally:
            worker.kill()
        out = worker.output()
        assert code == 78, out[-3000:]
        assert f"fix: ACL SETUSER {APP_USER} &*" in out and "Traceback" not in out


def tls_unsupported_reason() -> str | None:
    """Why the installed redis-server cannot serve TLS, or None when it can."""
    binary = shutil.which("redis-server")
    if not binary:
        return "redis-server not installed"
    # With TLS built in, this gets as far as "not listening anywhere" and exits 1; without
    # it, the tls-port directive itself is refused.
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    out = probe.stdout + probe.stderr
    if "Bad directive" in out or "FATAL CONFIG" in out or "not supported" in out:
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        return "redis-server was built without TLS: " + " / ".join(lines[-3:])
    return None


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    reason = tls_unsupported_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("openssl"):
        pytest.skip("the openssl CLI is missing; fix: apt-get install openssl")
    return make_tls_files(tmp_path / "tls")


def test_tls_worker_submit_status_and_health_over_rediss(
    appliance_env: dict[str, str], tmp_path: Path, start_worker: WorkerFactory, tls_files: TlsFiles
) -> None:
    admin_pw, app_pw = secrets.token_hex(8), secrets.token_hex(8)
    users = acl_users(admin_pw, app_pw, RECOMMENDED_RULE)
    with local_redis_server(
        tmp_path / "redis", password=admin_pw, username="admin", acl_users=users, tls=tls_files
    ) as (server, _):
        env = app_env(appliance_env, server, app_pw, tmp_path)
        broker = env["APPLIANCE_BROKER_URL"]
        assert broker.startswith("rediss://") and "ssl_cert_reqs=required" in broker
        worker = start_worker(env, "-c", "1")
        assert "rediss://" in worker.output()

        submitted = run_cli(env, "submit", "demo.add", "--args", "[20, 22]", "--wait", "60")
        assert (submitted.returncode, submitted.stdout.strip()) == (0, "42"), submitted.stderr

        health = run_cli(env, "health", "--json")
        checks = checks_of(health)
        assert checks["redis_latency"]["status"] == "OK", health.stdout
        assert checks["eviction_policy"]["status"] == "OK"
        assert checks["workers_default"]["status"] == "OK"
        assert "redis_info" not in checks  # the recommended rule includes +info
        status = run_cli(env, "status", "--json")
        assert status.returncode == 0 and "error" not in json.loads(status.stdout)
        tasks = run_cli(env, "tasks", "list", "--json")
        assert [r["status"] for r in json.loads(tasks.stdout)] == ["SUCCESS"]

        # The server speaks TLS only: plain RESP on the same port gets nowhere ...
        plain = dict(env, APPLIANCE_BROKER_URL=broker.replace("rediss://", "redis://", 1))
        plain_health = run_cli(plain, "health", "--json")
        assert plain_health.returncode == 2
        assert checks_of(plain_health)["redis"]["status"] == "CRITICAL"
        # ... and a server certificate the client cannot verify is one CRITICAL line.
        unverified = broker.split("?")[0] + "?ssl_cert_reqs=required"
        bad = run_cli(dict(env, APPLIANCE_BROKER_URL=unverified), "health")
        assert bad.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in bad.stdout
        assert "Traceback" not in bad.stdout + bad.stderr
