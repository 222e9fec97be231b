"""The systemd units under a real systemd: install.sh in a booted Debian, then the promises.

One machine per module; the tests run in file order and build on each other (install,
start, readiness, a task, drain on stop, restart after SIGKILL, watchdog, health timer,
Flower added with task events on, idempotent re-install, uninstall), as an operator would
go through them.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.processes import wait_until
from tests.system.machine import Machine

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

WORKER = "appliance-worker@default.service"
BEAT = "appliance-beat.service"
FLOWER = "appliance-flower.service"
APPLIANCE = "/opt/appliance/bin/appliance"
INSTALL = "/root/appliance/scripts/install.sh"
# Short limits so a killed worker's tasks come back quickly (the visibility timeout) and
# the rendered stop timeout is checked: 20 + 30 = 50 s.
TEST_SETTINGS = """
APPLIANCE_TASK_SOFT_TIME_LIMIT=15
APPLIANCE_TASK_TIME_LIMIT=20
APPLIANCE_VISIBILITY_TIMEOUT=25
"""


def appliance(machine: Machine, *args: str, timeout: float = 60) -> str:
    """An `appliance` command as the appliance user, reading the system env file."""
    return machine.run(APPLIANCE, *args, user="appliance", timeout=timeout).stdout


def submit(machine: Machine, name: str, *args: str) -> str:
    out = machine.run(APPLIANCE, "submit", name, *args, user="appliance")
    return out.stdout.strip().split()[-1]  # the task id


def record(machine: Machine, task_id: str) -> dict[str, object]:
    return json.loads(appliance(machine, "tasks", "show", task_id, "--json"))  # type: ignore[no-any-return]


def status_of(machine: Machine, task_id: str) -> object:
    return record(machine, task_id)["status"]


def started(machine: Machine) -> set[str]:
    """Ids of the tasks running now."""
    listed = json.loads(appliance(machine, "tasks", "list", "--status", "STARTED", "--json"))
    return {str(task["id"]) for task in listed}


def main_pid(machine: Machine, unit: str = WORKER) -> int:
    return int(machine.show(unit, "MainPID"))


def running(machine: Machine, unit: str) -> bool:
    return machine.show(unit, "SubState") == "running" and main_pid(machine, unit) > 0


def unit_files(machine: Machine) -> str:
    return machine.run(
        "sh", "-c", "find /etc/systemd/system -name 'appliance*' | sort"
    ).stdout.strip()


def fingerprint(machine: Machine) -> str:
    """Hashes of everything install.sh writes (env file, units, Redis tuning, the venv)."""
    return machine.run(
        "sh",
        "-c",
        "find /etc/appliance /etc/systemd/system /etc/redis /opt/appliance -type f "
        "-not -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum",
    ).stdout


@pytest.fixture(scope="module")
def installed(machine: Machine) -> Machine:
    """install.sh --wheelhouse inside the machine, then re-run with short test limits."""
    first = machine.run("bash", INSTALL, "--wheelhouse", "/root/wheelhouse", timeout=600)
    assert "APPLIANCE OK" in first.stdout, first.stdout
    machine.run("sh", "-c", f"printf '%s' '{TEST_SETTINGS}' >> /etc/appliance/appliance.env")
    second = machine.run("bash", INSTALL, "--wheelhouse", "/root/wheelhouse", timeout=600)
    assert "wrote /etc/systemd/system/appliance-worker@.service" in second.stdout, second.stdout
    return machine


def test_install_creates_user_env_file_and_units(installed: Machine) -> None:
    m = installed
    assert m.run("stat", "-c", "%a %U:%G", "/etc/appliance/appliance.env").stdout.split() == [
        "640",
        "root:appliance",
    ]
    assert m.run("stat", "-c", "%U", "/var/lib/appliance").stdout.strip() == "appliance"
    redis_conf = m.run("cat", "/etc/redis/redis.conf").stdout
    assert redis_conf.count("include /etc/redis/appliance.conf") == 1
    assert "maxmemory-policy noeviction" in m.run("cat", "/etc/redis/appliance.conf").stdout
    password = m.run("redis-cli", "--no-auth-warning", "-a", _password(m), "CONFIG", "GET", "*")
    config = password.stdout.split("\n")
    assert config[config.index("maxmemory-policy") + 1] == "noeviction"
    assert config[config.index("appendonly") + 1] == "yes"
    # The stop timeout was rendered from the configured hard time limit (20 s + 30 s).
    assert m.show(WORKER, "TimeoutStopUSec") == "50s"
    assert m.show(WORKER, "UnitFileState") == "enabled"
    assert m.show("appliance.target", "UnitFileState") == "enabled"
    assert m.show("appliance-healthcheck.timer", "ActiveState") == "active"


def _password(machine: Machine) -> str:
    env = machine.run("cat", "/etc/appliance/appliance.env").stdout
    url = next(line for line in env.splitlines() if line.startswith("APPLIANCE_BROKER_URL="))
    return url.split("://:", 1)[1].split("@", 1)[0]


def test_target_starts_worker_and_beat_active_only_after_ready(installed: Machine) -> None:
    m = installed
    m.run("systemctl", "stop", "appliance.target")  # PartOf=: stops (drains) both
    for unit in (WORKER, BEAT):
        wait_until(lambda u=unit: m.show(u, "ActiveState") == "inactive", 60, f"{unit} to stop")
    m.run("systemctl", "start", "--no-block", "appliance.target")
    # Type=notify: "activating" until the worker itself says READY=1.
    states = set()
    wait_until(
        lambda: states.add(m.show(WORKER, "ActiveState")) or "active" in states, 120, "active"
    )
    assert "activating" in states
    m.run("systemctl", "start", "appliance.target")  # returns once both said READY
    for unit in (WORKER, BEAT):
        assert running(m, unit), m.run("systemctl", "status", unit, check=False).stdout
        started = int(m.show(unit, "ExecMainStartTimestampMonotonic"))
        active = int(m.show(unit, "ActiveEnterTimestampMonotonic"))
        assert active - started > 500_000, "active before the process could have said READY"
    status = m.show(WORKER, "StatusText")  # sent by the worker itself with READY=1
    assert status.startswith("default@") and ": consuming default,high,low,celery" in status
    assert m.show(BEAT, "StatusText").startswith("leader")
    assert m.show(WORKER, "WatchdogUSec") == "1min"


def test_submit_from_the_appliance_user_prints_the_result(installed: Machine) -> None:
    out = installed.run(
        APPLIANCE, "submit", "demo.add", "--args", "[2,3]", "--wait", "30", user="appliance"
    )
    assert out.stdout.strip() == "5"


def test_stop_lets_a_running_task_finish(installed: Machine) -> None:
    m = installed
    task_id = submit(m, "demo.sleep", "--args", "[5]")
    wait_until(lambda: status_of(m, task_id) == "STARTED", 30, "the task to start")
    began = time.monotonic()
    m.run("systemctl", "stop", WORKER, timeout=120)  # returns when the worker has exited
    assert time.monotonic() - began > 1, "the stop did not wait for the running task"
    assert m.show(WORKER, "Result") == "success"  # exited 0, no SIGKILL
    assert status_of(m, task_id) == "SUCCESS"
    assert "WorkerLostError" not in m.journal(WORKER)
    m.run("systemctl", "start", WORKER)


def test_sigkill_of_the_main_process_restarts_and_loses_nothing(installed: Machine) -> None:
    m = installed
    restarts = int(m.show(WORKER, "NRestarts"))
    ids = [submit(m, "demo.sleep", "--args", "[4]") for _ in range(5)]
    wait_until(lambda: started(m) & set(ids), 30, "a task to be running")
    old = main_pid(m)
    m.run("bash", "-c", f"kill -9 {old}")
    wait_until(
        lambda: int(m.show(WORKER, "NRestarts")) > restarts and running(m, WORKER),
        60,
        "systemd to restart the worker",
    )
    assert main_pid(m) != old
    # Unacked tasks of the killed worker come back after the visibility timeout (25 s).
    wait_until(
        lambda: all(status_of(m, i) == "SUCCESS" for i in ids),
        120,
        "every task to succeed",
        interval=1,
    )


def test_a_frozen_worker_is_restarted_by_the_watchdog(installed: Machine) -> None:
    m = installed
    dropin = "/etc/systemd/system/appliance-worker@default.service.d/zz-test-watchdog.conf"
    m.run("mkdir", "-p", dropin.rsplit("/", 1)[0])
    m.run("sh", "-c", f"printf '[Service]\\nWatchdogSec=6s\\n' > {dropin}")
    try:
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "restart", WORKER)
        assert m.show(WORKER, "WatchdogUSec") == "6s"
        restarts = int(m.show(WORKER, "NRestarts"))
        frozen = main_pid(m)
        m.run("bash", "-c", f"kill -STOP {frozen}")
        wait_until(
            lambda: int(m.show(WORKER, "NRestarts")) > restarts and running(m, WORKER),
            60,
            "the watchdog to restart the frozen worker",
            interval=0.5,
        )
        assert main_pid(m) != frozen
        assert (
            "Watchdog timeout"
            in m.run("journalctl", "--no-pager", "-u", WORKER, "-n", "200").stdout
        )
    finally:
        m.run("rm", "-f", dropin)
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "restart", WORKER)
    out = m.run(
        APPLIANCE, "submit", "demo.add", "--args", "[1,1]", "--wait", "30", user="appliance"
    )
    assert out.stdout.strip() == "2"


def test_the_health_timer_runs_the_check_and_it_succeeds(installed: Machine) -> None:
    m = installed
    unit = "appliance-healthcheck.service"
    before = int(m.show(unit, "ExecMainExitTimestampMonotonic") or 0)
    # The timer fires every minute (first 15 s after it started): wait for a fresh run.
    wait_until(
        lambda: int(m.show(unit, "ExecMainExitTimestampMonotonic") or 0) > before,
        90,
        "the timer to run the health check",
        interval=1,
    )
    assert m.show(unit, "Result") == "success"
    assert m.show(unit, "ExecMainStatus") == "0"
    assert "APPLIANCE OK" in m.journal(unit)


# A GET of Flower's API on the machine, as the appliance user, with the credentials of the
# env file (or none): prints {"status": ..., "body": ...}.
FLOWER_GET = """
import base64, json, sys, urllib.error, urllib.request
request = urllib.request.Request("http://127.0.0.1:5555" + sys.argv[1])
if sys.argv[2] == "auth":
    env = open("/etc/appliance/appliance.env").read().splitlines()
    (auth,) = [l.split("=", 1)[1] for l in env if l.startswith("FLOWER_BASIC_AUTH=")]
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        status, body = response.status, response.read().decode()
    try:
        body = json.loads(body)
    except ValueError:  # /healthcheck says OK
        pass
    print(json.dumps({"status": status, "body": body}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": None}))
except OSError as exc:
    print(json.dumps({"status": 0, "body": str(exc)}))
"""


def flower_get(machine: Machine, path: str, auth: bool = True) -> tuple[int, object]:
    out = machine.run(
        "/opt/appliance/bin/python", "-c", FLOWER_GET, path, "auth" if auth else "none",
        user="appliance",
    )  # fmt: skip
    answer = json.loads(out.stdout)
    return int(answer["status"]), answer["body"]


def test_flower_shows_every_worker_and_with_task_events_every_task(installed: Machine) -> None:
    m = installed
    m.run("sh", "-c", "echo APPLIANCE_TASK_EVENTS=true >> /etc/appliance/appliance.env")
    out = m.run("bash", INSTALL, "--wheelhouse", "/root/wheelhouse", "--with-flower", timeout=600)
    assert "added FLOWER_BASIC_AUTH" in out.stdout, out.stdout
    env = m.run("cat", "/etc/appliance/appliance.env").stdout
    (auth,) = [line.split("=", 1)[1] for line in env.splitlines() if "FLOWER_BASIC_AUTH=" in line]
    assert auth.split(":", 1)[1] not in out.stdout + out.stderr
    m.run("systemctl", "restart", WORKER)  # the workers read APPLIANCE_TASK_EVENTS at start
    wait_until(lambda: running(m, FLOWER), 60, "Flower to run")
    assert m.show(FLOWER, "UnitFileState") == "enabled"
    # The credentials are never on a command line (minbase has no ps: /proc itself).
    cmdlines = m.run("sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '", check=False)
    assert "appliance flower --address=127.0.0.1" in cmdlines.stdout
    assert auth not in cmdlines.stdout
    wait_until(lambda: flower_get(m, "/healthcheck", auth=False)[0] == 200, 60, "Flower")
    assert flower_get(m, "/api/workers", auth=False)[0] == 401

    consumers = int(m.run("python3", "-c", "import os; print(os.cpu_count())").stdout)

    def workers() -> list[str] | None:
        status, body = flower_get(m, "/api/workers?refresh=1")
        nodes = sorted(n for n in body or {} if n.startswith("default."))  # type: ignore[union-attr]
        return nodes if status == 200 and len(nodes) == consumers else None

    nodes = wait_until(workers, 60, "Flower to list every consumer node", interval=1)
    task_id = submit(m, "demo.add", "--args", "[20,22]")

    def task() -> dict[str, object] | None:
        status, body = flower_get(m, "/api/tasks")
        found = (body or {}).get(task_id) if status == 200 else None  # type: ignore[union-attr]
        return found if found and found.get("state") == "SUCCESS" else None

    shown = wait_until(task, 60, "Flower to list the task as SUCCESS", interval=1)
    assert shown["name"] == "demo.add" and shown["worker"] in nodes
    assert str(shown["result"]) == "42"


def test_a_second_install_changes_nothing_and_all_stays_healthy(installed: Machine) -> None:
    m = installed
    before, pids = fingerprint(m), (main_pid(m), main_pid(m, BEAT), main_pid(m, FLOWER))
    out = m.run("bash", INSTALL, "--wheelhouse", "/root/wheelhouse", timeout=600).stdout
    assert "nothing changed" in out, out
    assert "keeping it" in out  # Flower stays, without --with-flower
    assert fingerprint(m) == before
    assert (main_pid(m), main_pid(m, BEAT), main_pid(m, FLOWER)) == pids, (
        "a no-op re-install restarted something"
    )
    health = m.run(APPLIANCE, "health", user="appliance", check=False)
    assert health.returncode == 0, health.stdout


def test_uninstall_leaves_no_unit_behind_and_keeps_the_data(installed: Machine) -> None:
    m = installed
    m.run("bash", "/root/appliance/scripts/uninstall.sh", timeout=600)
    assert unit_files(m) == ""
    listed = m.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "appliance*")
    assert listed.stdout.strip() == ""
    assert m.run("test", "-e", "/opt/appliance", check=False).returncode == 1
    assert m.run("test", "-f", "/etc/appliance/appliance.env", check=False).returncode == 0
    assert m.run("test", "-f", "/var/lib/appliance/appliance.db", check=False).returncode == 0
