"""Secrets from the env file never show: not in config show, status, health, logs or `ps`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import ApplianceProcess, free_port, run_cli
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


ACL_USER = "appliance"


def _masked_one_line(result: subprocess.CompletedProcess[str], *secret: str) -> str:
    """The single `appliance: error:` line of a failed command, with no secret in it."""
    out = result.stdout + result.stderr
    for value in secret:
        assert value not in out, out
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("appliance: error: "), result.stderr
    return lines[0]


def test_acl_user_password_never_in_errors_logs_or_process_listings(
    appliance_env: dict[str, str], tmp_path: Path
) -> None:
    """An ACL user's password (right or wrong) shows in no error, log, output or `ps`."""
    password, admin_pw = "acl-" + secrets.token_hex(8), "adm-" + secrets.token_hex(8)
    wrong = "wrong-" + secrets.token_hex(8)
    users = (
        "default off",
        f"admin on >{admin_pw} ~* &* +@all",
        f"{ACL_USER} on >{password} ~* &* +@all -@dangerous +info",
    )
    with local_redis_server(
        tmp_path / "r", password=admin_pw, username="admin", acl_users=users
    ) as (server, _):
        env_file = tmp_path / "appliance.env"
        env_file.write_text(
            f"APPLIANCE_BROKER_URL={server.url(0, username=ACL_USER, password=password)}\n"
            f"APPLIANCE_RESULT_BACKEND={server.url(1, username=ACL_USER, password=password)}\n"
        )
        env_file.chmod(0o640)
        env = {
            k: v
            for k, v in appliance_env.items()
            if k not in ("APPLIANCE_BROKER_URL", "APPLIANCE_RESULT_BACKEND")
        }
        env["APPLIANCE_ENV_FILE"] = str(env_file)
        env["APPLIANCE_HEALTH_EXPECT_BEAT"] = "false"
        bad = dict(
            env,
            APPLIANCE_BROKER_URL=server.url(0, username=ACL_USER, password=wrong),
            APPLIANCE_RESULT_BACKEND=server.url(1, username=ACL_USER, password=wrong),
        )
        worker = ApplianceProcess(["worker", "-c", "1"], env, tmp_path / "worker.log")
        try:
            worker.wait_for_output(" ready.")
            submitted = run_cli(env, "submit", "demo.add", "--args", "[1, 2]", "--wait", "30")
            assert submitted.stdout.strip() == "3", submitted.stderr
            outputs = {
                "config show --json": run_cli(env, "config", "show", "--json"),
                "status --json": run_cli(env, "status", "--json"),
                "health --json": run_cli(env, "health", "--json"),
            }
            refused = {
                "submit": run_cli(bad, "submit", "demo.add", "--args", "[1, 2]"),
                "submit --wait": run_cli(bad, "submit", "demo.add", "--wait", "5"),
                "queues": run_cli(bad, "queues"),
                # --force: an id without a record is refused (66) before Redis is asked
                "tasks revoke": run_cli(bad, "tasks", "revoke", "0" * 32, "--force"),
            }
            unhealthy = run_cli(bad, "health")
            bad_status = run_cli(bad, "status", "--json")
            ps = subprocess.run(
                ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
            )
        finally:
            worker.terminate()
    health = json.loads(outputs["health --json"].stdout)
    assert {c["name"]: c["status"] for c in health["checks"]}["workers_default"] == "OK"
    for name, result in outputs.items():
        assert password not in result.stdout + result.stderr, name
    # Redis refusing the login: one line naming the masked URL, exit 69, no traceback.
    for name, result in refused.items():
        line = _masked_one_line(result, password, wrong)
        assert result.returncode == 69, (name, result.stderr)
        assert f"redis://{ACL_USER}:****@" in line, (name, line)
    assert unhealthy.returncode == 2 and "WRONGPASS" in unhealthy.stdout
    assert wrong not in unhealthy.stdout + unhealthy.stderr
    assert "Traceback" not in unhealthy.stdout + unhealthy.stderr
    assert wrong not in bad_status.stdout + bad_status.stderr
    assert password not in ps.stdout and admin_pw not in ps.stdout
    assert password not in worker.output()


@pytest.fixture
def scram_postgres(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private PostgreSQL cluster that checks passwords (scram-sha-256), stopped after.

    The shared test server trusts loopback logins, so a wrong password would pass there.
    Yields (URL with the right password, the password).
    """
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (initdb); fix: apt-get install postgresql")
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("a private PostgreSQL cluster needs root (initdb runs as user postgres)")
    password = "pg-" + secrets.token_hex(8)
    home = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    shutil.chown(home, "postgres", "postgres")
    (home / "pw").write_text(password + "\n")
    shutil.chown(home / "pw", "postgres", "postgres")
    port = free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120
        )

    data = home / "data"
    try:
        as_postgres(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
            "--auth=scram-sha-256", f"--pwfile={home / 'pw'}",
        )  # fmt: skip
        as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start",
        )  # fmt: skip
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres", password
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_database_password_is_masked_in_errors_and_the_worker_log(
    appliance_env: dict[str, str], tmp_path: Path, scram_postgres: tuple[str, str]
) -> None:
    """A wrong PostgreSQL password: one masked line (exit 74), nothing in the worker log."""
    url, password = scram_postgres
    wrong = "wrong-" + secrets.token_hex(8)
    good = dict(appliance_env, APPLIANCE_DATABASE_URL=url)
    upgraded = run_cli(good, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert password not in upgraded.stdout + upgraded.stderr
    bad = dict(appliance_env, APPLIANCE_DATABASE_URL=url.replace(password, wrong))
    for args in (("db", "status"), ("db", "upgrade"), ("tasks", "list")):
        result = run_cli(bad, *args)
        line = _masked_one_line(result, password, wrong)
        assert result.returncode == 74, (args, result.stderr)
        assert "://postgres:****@127.0.0.1" in line and "password authentication" in line, line
    # A worker on the wrong password starts (records are best effort) and logs no secret.
    worker = ApplianceProcess(["worker", "-c", "1"], bad, tmp_path / "worker.log")
    try:
        worker.wait_for_output(" ready.")
        submitted = run_cli(bad, "submit", "demo.add", "--args", "[1, 2]", "--wait", "30")
        assert submitted.stdout.strip() == "3", submitted.stderr
        ps = subprocess.run(
            ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True
        )
    finally:
        worker.terminate()
    log = worker.output()
    assert "://postgres:****@127.0.0.1" in log  # the record writes failed, and said where
    for value in (password, wrong):
        assert value not in log and value not in ps.stdout
        assert value not in submitted.stdout + submitted.stderr
