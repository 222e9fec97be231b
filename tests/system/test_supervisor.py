"""deploy/supervisor/appliance.conf under a real supervisord, driven with supervisorctl.

The config is rendered as `appliance deploy supervisor-conf` renders it for a host, with a
private redis-server as the broker, and supervisord runs in the foreground (-n) under the
fixture. Given worker and beat RUNNING, a stop drains the running task and a SIGKILLed
worker is restarted with no task lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config.settings import load_settings
from appliance.host.embedded import write_supervisord_conf
from tests.helpers.processes import run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

WORKER = "appliance:appliance-worker-default"
BEAT = "appliance:appliance-beat"


@dataclass
class Supervisord:
    conf: Path
    logs: Path
    env: dict[str, str]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def state(self, program: str) -> str:
        out = self.ctl("status", program).stdout.split()
        return out[1] if len(out) > 1 else ""

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip() or 0)

    def worker_log(self) -> str:
        return (self.logs / "worker-default.log").read_text(errors="replace")

    def submit(self, name: str, *args: str) -> str:
        out = run_cli(self.env, "submit", name, *args)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def status(self, task_id: str) -> str:
        out = run_cli(self.env, "tasks", "show", task_id, "--json")
        return str(json.loads(out.stdout)["status"]) if out.returncode == 0 else ""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server, as `appliance up` starts one."""
    with local_redis_server(tmp_path / "redis") as (server, _proc):
        yield server


@pytest.fixture
def supervisord(
    tmp_path: Path, broker: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Supervisord]:
    """supervisord -n with the appliance programs; stopped (draining) at teardown."""
    env = dict(
        os.environ,
        APPLIANCE_BROKER_URL=broker.broker_url,
        APPLIANCE_RESULT_BACKEND=broker.backend_url,
        APPLIANCE_DATABASE_URL=f"sqlite:///{tmp_path / 'records.db'}",
        APPLIANCE_STATE_DIR=str(tmp_path / "state"),
        # Short limits: a killed worker's unacked tasks come back after 15 s.
        APPLIANCE_TASK_SOFT_TIME_LIMIT="8",
        APPLIANCE_TASK_TIME_LIMIT="10",
        APPLIANCE_VISIBILITY_TIMEOUT="15",
        APPLIANCE_CONCURRENCY="2",
    )
    for key, value in env.items():
        if key.startswith("APPLIANCE_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "state").mkdir()
    assert run_cli(env, "db", "upgrade").returncode == 0
    conf = write_supervisord_conf(settings, tmp_path)
    log = (tmp_path / "supervisord.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sup = Supervisord(conf, logs, env)
    try:
        wait_until(
            lambda: sup.state(WORKER) == "RUNNING" and sup.state(BEAT) == "RUNNING",
            60,
            "worker and beat RUNNING",
            interval=0.2,
        )
        yield sup
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(settings.stop_timeout + 15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of the group may survive
            proc.wait()
            log.close()


def test_worker_and_beat_run_and_a_task_completes(supervisord: Supervisord) -> None:
    out = run_cli(supervisord.env, "submit", "demo.add", "--args", "[2,3]", "--wait", "30")
    assert out.stdout.strip() == "5", out.stderr
    assert supervisord.state(BEAT) == "RUNNING"


def test_stop_lets_the_running_task_finish(supervisord: Supervisord) -> None:
    sup = supervisord
    wait_until(lambda: " ready." in sup.worker_log(), 60, "the worker to consume")
    task_id = sup.submit("demo.sleep", "--args", "[5]")
    wait_until(lambda: sup.status(task_id) == "STARTED", 30, "the task to start")
    stopped = sup.ctl("stop", WORKER)  # returns once the worker has exited
    assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert sup.status(task_id) == "SUCCESS"
    assert "WorkerLostError" not in sup.worker_log()
    assert sup.state(WORKER) == "STOPPED"


def test_sigkill_of_the_worker_restarts_it_and_loses_no_task(supervisord: Supervisord) -> None:
    sup = supervisord
    wait_until(lambda: " ready." in sup.worker_log(), 60, "the worker to consume")
    ids = [sup.submit("demo.sleep", "--args", "[3]") for _ in range(5)]
    wait_until(lambda: any(sup.status(i) == "STARTED" for i in ids), 30, "a task to run")
    old = sup.pid(WORKER)
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: sup.state(WORKER) == "RUNNING" and sup.pid(WORKER) not in (0, old),
        60,
        "supervisord to restart the worker",
        interval=0.2,
    )
    # Unacked tasks of the killed worker come back after the visibility timeout (15 s).
    wait_until(
        lambda: all(sup.status(i) == "SUCCESS" for i in ids),
        120,
        "every task to succeed",
        interval=0.5,
    )
