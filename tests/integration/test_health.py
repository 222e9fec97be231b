"""`appliance health` against a real redis-server: every check driven to OK, WARNING, CRITICAL.

Given a private redis-server tuned like production, when one thing goes wrong at a
time, then the check names it, the exit code follows Nagios, and nothing hangs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.records import store
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server
from tests.integration.conftest import WorkerFactory
from tests.unit.health.promtool import check_metrics


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, subprocess.Popen[bytes]]]:
    """A redis-server of this test alone, tuned as the appliance wants it."""
    with local_redis_server(
        tmp_path / "redis",
        "--maxmemory",
        "256mb",
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
    ) as (server, proc):
        yield server, proc


@pytest.fixture
def health_env(
    api_env: dict[str, str],
    private_redis: tuple[RedisServer, subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    server, _ = private_redis
    monkeypatch.setenv("APPLIANCE_BROKER_URL", server.broker_url)
    monkeypatch.setenv("APPLIANCE_RESULT_BACKEND", server.backend_url)
    monkeypatch.setenv("APPLIANCE_HEALTH_EXPECT_BEAT", "false")
    return dict(
        api_env,
        APPLIANCE_BROKER_URL=server.broker_url,
        APPLIANCE_RESULT_BACKEND=server.backend_url,
        APPLIANCE_HEALTH_EXPECT_BEAT="false",
    )


def health(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = run_cli(env, "health", *args, timeout=20)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout


def health_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict]]:
    code, out = health(env, "--json", *args)
    data = json.loads(out)
    assert data["exit_code"] == code
    return code, {c["name"]: c for c in data["checks"]}


def test_healthy_appliance_is_ok_with_perfdata(
    health_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(health_env, "-c", "1")
    code, out = health(health_env)
    assert code == 0, out
    first = out.splitlines()[0]
    assert first.startswith("APPLIANCE OK - ")
    assert "'redis_latency'=" in first and "'workers_default'=1" in first
    assert "'queue_default_depth'=0;1000;10000;0" in first


def test_no_worker_is_critical_and_names_the_group(health_env: dict[str, str]) -> None:
    code, checks = health_json(health_env)
    assert code == 2
    assert checks["workers_default"]["status"] == "CRITICAL"
    assert "appliance-worker@default" in checks["workers_default"]["message"]


def test_evicting_policy_is_critical_and_named(
    health_env: dict[str, str],
    private_redis: tuple[RedisServer, subprocess.Popen[bytes]],
) -> None:
    server, _ = private_redis
    server.client().config_set("maxmemory-policy", "allkeys-lru")
    code, out = health(health_env)
    assert code == 2
    assert "allkeys-lru" in out.splitlines()[0]


def test_memory_and_persistence_warnings(
    health_env: dict[str, str],
    private_redis: tuple[RedisServer, subprocess.Popen[bytes]],
    start_worker: WorkerFactory,
) -> None:
    server, _ = private_redis
    start_worker(health_env, "-c", "1")
    client = server.client()
    client.config_set("maxmemory", "0")
    code, checks = health_json(health_env)
    assert (code, checks["memory"]["status"]) == (1, "WARNING")
    assert "maxmemory" in checks["memory"]["message"]
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(int(used / 0.85)))  # ~85 % used
    code, checks = health_json(health_env)
    assert checks["memory"]["status"] == "WARNING", checks["memory"]
    code, checks = health_json(health_env, "--crit", "memory_pct=50")
    assert (code, checks["memory"]["status"]) == (2, "CRITICAL")
    client.config_set("maxmemory", "256mb")
    client.config_set("appendonly", "no")
    code, checks = health_json(health_env)
    assert (code, checks["persistence"]["status"]) == (1, "WARNING")


def test_queue_depth_counts_priority_subqueues_and_age_of_the_oldest(
    health_env: dict[str, str],
) -> None:
    for priority in ([], ["--priority", "0"], ["--priority", "9"]):
        assert run_cli(health_env, "submit", "demo.noop", *priority).returncode == 0
    wait_until(
        lambda: health_json(health_env)[1]["queue_default_age"]["value"] >= 1,
        30,
        "a message 1 s old",
    )
    code, checks = health_json(health_env, "--warn", "queue_depth=3", "--warn", "queue_age=1")
    assert code == 2  # and no worker for the default group: CRITICAL overall
    assert checks["queue_default_depth"]["value"] == 3
    assert checks["queue_default_depth"]["status"] == "WARNING"
    assert checks["queue_default_age"]["status"] == "WARNING"
    _code, checks = health_json(health_env, "--crit", "queue_age=1")
    assert checks["queue_default_age"]["status"] == "CRITICAL"


def test_unacked_count_and_age_while_a_task_runs(
    health_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(health_env, "-c", "1")
    assert run_cli(health_env, "submit", "demo.sleep", "--args", "[4]").returncode == 0
    wait_until(
        lambda: health_json(health_env)[1]["unacked_age"]["value"] >= 1,
        30,
        "an unacked message 1 s old",
    )
    _code, checks = health_json(health_env, "--warn", "unacked_age=1")
    assert checks["unacked"]["value"] == 1
    assert checks["unacked_age"]["status"] == "WARNING"


def test_redis_down_is_critical_quickly_without_a_hang(
    health_env: dict[str, str], private_redis: tuple[RedisServer, subprocess.Popen[bytes]]
) -> None:
    _, proc = private_redis
    proc.terminate()
    proc.wait(10)
    code, out = health(health_env)  # run_cli's timeout fails the test if it hangs
    assert code == 2
    assert "Redis unreachable" in out and "fix:" in out


def test_redis_frozen_is_critical_within_seconds(
    health_env: dict[str, str], private_redis: tuple[RedisServer, subprocess.Popen[bytes]]
) -> None:
    _, proc = private_redis
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        code, out = health(health_env)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert code == 2 and "Redis unreachable" in out


def test_a_port_that_is_not_redis_is_critical(health_env: dict[str, str]) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    env = dict(health_env, APPLIANCE_BROKER_URL=f"redis://127.0.0.1:{server.getsockname()[1]}/0")
    try:
        code, out = health(env)
    finally:
        server.close()
    assert code == 2 and "Redis" in out


def test_bad_settings_are_unknown(health_env: dict[str, str]) -> None:
    code, out = health(dict(health_env, APPLIANCE_VISIBILITY_TIMEOUT="soon"))
    assert code == 3
    assert out.startswith("APPLIANCE UNKNOWN - ") and "APPLIANCE_VISIBILITY_TIMEOUT" in out


def test_orphaned_pidbox_replies_warn(
    health_env: dict[str, str], private_redis: tuple[RedisServer, subprocess.Popen[bytes]]
) -> None:
    client = private_redis[0].client()
    for i in range(12):
        client.rpush(f"{i:032x}.reply.celery.pidbox", "x")
    _code, checks = health_json(health_env)
    assert checks["pidbox_orphans"]["value"] == 12
    assert checks["pidbox_orphans"]["status"] == "WARNING"


def test_stuck_task_records_with_db(
    health_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(health_env, "-c", "1")
    url = os.environ["APPLIANCE_DATABASE_URL"]
    store.record_started(
        url,
        task_id="stuck-1",
        name="demo.sleep",
        args=[],
        kwargs={},
        queue="default",
        worker="gone@nowhere",
        retries=0,
    )
    _code, checks = health_json(health_env, "--db")
    assert checks["database"]["status"] == "OK"
    assert checks["stuck_tasks"]["status"] == "WARNING"  # its worker has no heartbeat
    assert "no heartbeat" in checks["stuck_tasks"]["message"]


def test_textfile_parses_with_prometheus_client(health_env: dict[str, str], tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    textfile = tmp_path / "appliance.prom"
    code, _ = health(health_env, "--textfile", str(textfile))
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    assert families["appliance_health_status"].samples[0].value == code
    checks = {s.labels["check"]: s.value for s in families["appliance_check_status"].samples}
    assert checks["workers_default"] == 2
    code, out = health(health_env, "--format", "prometheus")
    assert "appliance_check_value" in out


def metric_samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted label pairs: value}} of a Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_prometheus_metrics_of_a_real_worker_pass_promtool(
    health_env: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    start_worker(health_env, "-c", "1")
    assert (
        run_cli(health_env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "30").returncode
        == 0
    )
    run_cli(health_env, "submit", "demo.calculate", "--args", '[1, 2, "nope"]', "--wait", "30")
    retried = ["--kwargs", '{"fail_times": 1, "countdown": 0.1}', "--wait", "30"]
    assert run_cli(health_env, "submit", "demo.retry_manual", *retried).returncode == 0

    def counted() -> dict[str, float]:
        found = metric_samples(health(health_env, "--format", "prometheus")[1])
        totals: dict[str, float] = {}
        for labels, value in found.get("appliance_tasks_total", {}).items():
            state = dict(labels)["state"]
            totals[state] = totals.get(state, 0) + value
        return totals

    wait_until(
        lambda: counted() == {"succeeded": 2, "failed": 1, "retried": 1},
        60,
        "a heartbeat counting 2 succeeded, 1 failed, 1 retried",
    )
    textfile = tmp_path / "appliance.prom"
    code, out = health(health_env, "--format", "prometheus", "--textfile", str(textfile))
    check_metrics(out)
    check_metrics(textfile.read_text())
    for text in (out, textfile.read_text()):
        found = metric_samples(text)
        assert found["appliance_up"] == {(): 1}
        assert found["appliance_health_status"] == {(): code}
        assert found["appliance_queue_depth"][(("queue", "default"),)] == 0
        assert found["celery_queue_length"][(("queue_name", "default"),)] == 0
        assert (("queue", "default"),) in found["appliance_queue_oldest_age_seconds"]
        assert found["appliance_unacked"] == {(): 0}
        assert found["appliance_workers"] == {(("group", "default"),): 1}
        ((host_labels, up),) = found["celery_worker_up"].items()
        hostname = dict(host_labels)["hostname"]
        assert up == 1 and "@" in hostname
        assert found["celery_task_succeeded_total"] == {(("hostname", hostname),): 2}
        assert found["celery_task_failed_total"] == {(("hostname", hostname),): 1}
        assert found["celery_task_retried_total"] == {(("hostname", hostname),): 1}
        assert found["appliance_tasks_total"][(("hostname", hostname), ("state", "failed"))] == 1
        assert 0 < found["appliance_redis_latency_seconds"][()] < 2
        assert found["appliance_redis_memory_max_bytes"][()] == 256 * 1024 * 1024
        assert found["appliance_redis_memory_used_bytes"][()] > 0
        assert found["appliance_check_status"][(("check", "workers_default"),)] == 0
    assert "# TYPE appliance_tasks_total counter" in out
    assert "# TYPE celery_task_succeeded_total counter" in out


def test_textfile_never_keeps_a_stale_ok(
    health_env: dict[str, str],
    private_redis: tuple[RedisServer, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    textfile = tmp_path / "appliance.prom"
    health(health_env, "--textfile", str(textfile))
    before = metric_samples(textfile.read_text())["appliance_check_status"]
    assert before[(("check", "redis_latency"),)] == 0 and len(before) > 5

    code, out = health(
        dict(health_env, APPLIANCE_VISIBILITY_TIMEOUT="soon"), "--textfile", str(textfile)
    )
    assert code == 3 and out.startswith("APPLIANCE UNKNOWN - ")
    check_metrics(textfile.read_text())
    found = metric_samples(textfile.read_text())
    assert found["appliance_up"] == {(): 0} and found["appliance_health_status"] == {(): 3}
    assert found["appliance_check_status"] == {
        (("check", "health"),): 3,
        **{labels: 3 for labels in before},
    }
    assert "appliance_queue_depth" not in found

    _, proc = private_redis
    proc.terminate()
    proc.wait(10)
    code, out = health(health_env, "--textfile", str(textfile))
    assert code == 2 and "Redis unreachable" in out
    check_metrics(textfile.read_text())
    found = metric_samples(textfile.read_text())
    assert found["appliance_up"] == {(): 0} and found["appliance_health_status"] == {(): 2}
    assert found["appliance_check_status"][(("check", "redis"),)] == 2
    assert found["appliance_check_status"][(("check", "redis_latency"),)] == 3
    assert found["appliance_check_status"][(("check", "workers_default"),)] == 3
    assert "appliance_queue_depth" not in found and "appliance_check_value" not in found
    code, out = health(health_env, "--format", "prometheus")
    assert code == 2
    check_metrics(out)
    assert metric_samples(out)["appliance_up"] == {(): 0}


def test_health_imports_neither_celery_nor_task_modules(health_env: dict[str, str]) -> None:
    probe = (
        "import sys, runpy; sys.argv = ['appliance', 'health'];\n"
        "try:\n    runpy.run_module('appliance', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('celery', 'kombu', 'sqlalchemy', 'pydantic', 'redis', 'appliance.tasks')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=health_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_beat_running_makes_the_beat_check_ok(
    health_env: dict[str, str], start_worker: WorkerFactory, tmp_path: Path
) -> None:
    env = dict(health_env, APPLIANCE_HEALTH_EXPECT_BEAT="true")
    start_worker(env, "-c", "1")
    _code, checks = health_json(env)
    assert checks["beat"]["status"] == "CRITICAL"
    beat = ApplianceProcess(["beat"], env, tmp_path / "beat.log")
    try:
        wait_until(
            lambda: health_json(env)[1].get("beat_age", {}).get("status") == "OK", 60, "a beat tick"
        )
        assert health(env)[0] == 0
    finally:
        beat.terminate(timeout=60)


def test_database_down_is_critical_with_db(health_env: dict[str, str]) -> None:
    from tests.helpers.processes import free_port

    env = dict(health_env, APPLIANCE_DATABASE_URL=f"postgresql://u:pw@127.0.0.1:{free_port()}/x")
    code, checks = health_json(env, "--db")
    assert code == 2
    assert checks["database"]["status"] == "CRITICAL"
    assert (
        "unreachable" in checks["database"]["message"]
        and ":pw@" not in checks["database"]["message"]
    )


def test_database_schema_behind_is_critical_with_db(
    health_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(health_env, APPLIANCE_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db")
    code, checks = health_json(env, "--db")
    assert code == 2 and "appliance db upgrade" in checks["database"]["message"]
