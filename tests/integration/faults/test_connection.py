"""Fault injection on the connection to Redis (fault matrix rows 7 and 8, docs/reliability.md).

Row 7: redis-server paused (SIGSTOP) for 30 s during a load: publishers fail within a
bounded time with one line and exit 69 instead of hanging, a failed submit leaves no
PENDING record behind, and after SIGCONT the same worker resumes and every accepted id
ends SUCCESS.
Row 8: connections cut during a load, by `CLIENT KILL TYPE normal` again and again, and
by a TCP proxy that blackholes (longer than the socket timeout) and then resets: the
worker reconnects and keeps consuming; lost = 0.

Ledger: the task records (SQLite) and the `probe.tally` counts, kept on a second
redis-server that no fault touches (APPLIANCE_TEST_LEDGER_URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from appliance.core import constants as C
from appliance.records import store
from tests.helpers.ledger import all_succeeded as _done
from tests.helpers.ledger import statuses as _statuses
from tests.helpers.load import publish_batch
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server
from tests.helpers.tcp_proxy import TcpProxy

LOAD = 200
PAUSE_SECONDS = 30.0
FAST_RECOVERY = {
    # Small limits so unacked tasks of a lost connection come back within seconds.
    "APPLIANCE_VISIBILITY_TIMEOUT": "10",
    "APPLIANCE_TASK_TIME_LIMIT": "5",
    "APPLIANCE_TASK_SOFT_TIME_LIMIT": "4",
    "APPLIANCE_TASK_MODULES": "tests.integration.probe_tasks",
}
# Rows 7 and 8b: time limits above the stall. A task whose body finished just before
# the fault stores its result in the stalled Redis (result_backend_always_retry) within
# its time limits; with limits below the stall it ends FAILURE (SoftTimeLimitExceeded
# while storing) although its body ran: an explicit FAILURE, not the SUCCESS it earned.
OUTLAST_STALL = {
    "APPLIANCE_VISIBILITY_TIMEOUT": "60",
    "APPLIANCE_TASK_TIME_LIMIT": "50",
    "APPLIANCE_TASK_SOFT_TIME_LIMIT": "45",
}
# Row 8, CLIENT KILL: one kill every this many seconds. A consumer restart takes about a
# second (mingle waits 1 s for neighbours), so kills every 0.5 s keep the worker
# reconnecting without ever consuming; every 2 s it consumes between kills.
KILL_INTERVAL = 2.0
Figures = Callable[[str, object], None]


def _count(url: str, ids: list[str], status: str) -> int:
    return list(_statuses(url, ids).values()).count(status)


def _tallies(ledger: RedisServer, ids: list[str]) -> list[int]:
    counts = ledger.client().hgetall("appliance-test:tally")
    return [int(counts.get(task_id.encode(), 0)) for task_id in ids]


def _check_ledger(url: str, ledger: RedisServer, ids: list[str], record: Figures) -> None:
    """lost = 0: every accepted id is SUCCESS and ran at least once; report duplicates."""
    statuses = _statuses(url, ids)
    assert {t: s for t, s in statuses.items() if s != "SUCCESS"} == {}  # lost = 0
    tallies = _tallies(ledger, ids)
    assert min(tallies) >= 1, "a SUCCESS record without an execution in the ledger"
    record("tasks", len(ids))
    record("lost", 0)
    record("duplicates", sum(n - 1 for n in tallies))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[RedisServer, subprocess.Popen[bytes]]]:
    """The redis-server under test; never left stopped (SIGCONT before it is stopped)."""
    with local_redis_server(tmp_path / "broker") as (server, proc):
        try:
            yield server, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)


def _env(
    api_env: dict[str, str], broker_url: str, backend_url: str, ledger: RedisServer
) -> dict[str, str]:
    return dict(
        api_env,
        **FAST_RECOVERY,
        APPLIANCE_BROKER_URL=broker_url,
        APPLIANCE_RESULT_BACKEND=backend_url,
        APPLIANCE_TEST_LEDGER_URL=ledger.broker_url,
    )


@contextlib.contextmanager
def _worker(env: dict[str, str], log: Path) -> Iterator[ApplianceProcess]:
    worker = ApplianceProcess(["worker", "-c", "2"], env, log)
    try:
        worker.wait_for_output(" ready.")
        yield worker
    finally:
        worker.terminate()


def _load_until_a_quarter_is_done(env: dict[str, str], url: str) -> list[str]:
    ids = publish_batch(env, LOAD, seconds=0.05)
    wait_until(lambda: _count(url, ids, "SUCCESS") >= LOAD // 4, 120, "a quarter done")
    return ids


def _still_consuming(worker: ApplianceProcess, env: dict[str, str], url: str) -> None:
    """The same worker process (never restarted) runs new work on its new connection."""
    assert worker.proc.poll() is None, "the worker kept running"
    more = publish_batch(env, 5)
    wait_until(_done(url, more), 90, "new tasks after the fault")
    assert worker.proc.poll() is None
    assert "Unrecoverable error" not in worker.output()


# A producer that publishes once on a warm connection, then again when told (stdin),
# the way application code holding a connection meets a Redis that stops answering.
_WARM_PRODUCER = """
import json, sys, time
import appliance
from appliance.errors import ApplianceError
print(json.dumps({"warm": appliance.submit("probe.tally", args=[0.01])}), flush=True)
sys.stdin.readline()
started = time.monotonic()
try:
    outcome = {"id": appliance.submit("probe.tally", args=[0.01])}
except ApplianceError as exc:
    outcome = {"error": str(exc), "exit_code": exc.exit_code, "type": type(exc).__name__}
outcome["seconds"] = round(time.monotonic() - started, 2)
print(json.dumps(outcome), flush=True)
"""

_TASK_ID = re.compile(r"task ([0-9a-f-]{36})")


@pytest.mark.timeout(420)
def test_redis_paused_30s_publishers_fail_fast_and_nothing_accepted_is_lost(
    api_env: dict[str, str],
    broker: tuple[RedisServer, subprocess.Popen[bytes]],
    ledger: RedisServer,
    tmp_path: Path,
    record_property: Figures,
) -> None:
    server, proc = broker
    env = dict(_env(api_env, server.broker_url, server.backend_url, ledger), **OUTLAST_STALL)
    url = env["APPLIANCE_DATABASE_URL"]
    with _worker(env, tmp_path / "worker.log") as worker:
        producer = subprocess.Popen(
            [sys.executable, "-c", _WARM_PRODUCER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert producer.stdout and producer.stdin
            warm_id = json.loads(producer.stdout.readline())["warm"]
            ids = [warm_id, *_load_until_a_quarter_is_done(env, url)]

            os.kill(proc.pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            # The CLI, from a cold start.
            started = time.monotonic()
            cli = run_cli(env, "submit", "probe.tally", "--args", "[0.01]", timeout=120)
            cli_seconds = time.monotonic() - started
            # The Python API, on a connection that worked a moment ago.
            producer.stdin.write("go\n")
            producer.stdin.flush()
            api = json.loads(producer.stdout.readline())
            producer.wait(60)
            paused_for = time.monotonic() - paused_at
            assert paused_for < PAUSE_SECONDS, "the publishers failed while Redis was paused"

            assert cli.returncode == 69, cli.stderr
            lines = cli.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("appliance: error: "), cli.stderr
            assert "did not answer" in lines[0] and "fix:" in lines[0]
            assert "Traceback" not in cli.stderr and cli.stdout == ""
            assert api["type"] == "BrokerUnavailableError" and api["exit_code"] == 69, api
            assert "did not answer" in api["error"] and "\n" not in api["error"]
            # Bounded: one PUBLISH_SOCKET_TIMEOUT, plus the interpreter start for the CLI,
            # with a wide margin for a busy machine.
            assert api["seconds"] < C.PUBLISH_SOCKET_TIMEOUT + 8
            assert cli_seconds < C.PUBLISH_SOCKET_TIMEOUT + 25
            failed = [_TASK_ID.findall(text)[0] for text in (lines[0], api["error"])]
            # Not accepted, so no PENDING record is left for them.
            assert [store.get_record(url, task_id) for task_id in failed] == [None, None]

            time.sleep(max(0.0, PAUSE_SECONDS - (time.monotonic() - paused_at)))  # the fault
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            if producer.poll() is None:
                producer.kill()
            producer.communicate(timeout=30)  # reaps it and closes its pipes
        resumed_at = time.monotonic()
        wait_until(_done(url, ids), 240, f"all {len(ids)} accepted tasks SUCCESS after SIGCONT")
        recovery = round(time.monotonic() - resumed_at, 1)
        _still_consuming(worker, env, url)
        # A refused submit's command may still sit in the paused server's socket and run
        # on resume: then it is a normal SUCCESS record, never a stuck PENDING one, and it
        # ran once (the publisher does not retry after a timeout, which would queue copies).
        wait_until(
            lambda: all(s in ("MISSING", "SUCCESS") for s in _statuses(url, failed).values()),
            60,
            "refused submits to be absent or finished",
        )
        ghosts = sum(1 for s in _statuses(url, failed).values() if s == "SUCCESS")
        assert max(_tallies(ledger, failed)) <= 1
    _check_ledger(url, ledger, ids, record_property)
    record_property("recovery_seconds", recovery)
    record_property("publish_fail_seconds", round(max(api["seconds"], cli_seconds), 1))
    record_property("publish_fail_seconds_api", api["seconds"])
    record_property("refused_but_ran", ghosts)


@pytest.mark.timeout(300)
def test_client_kill_again_and_again_during_load_loses_nothing(
    api_env: dict[str, str],
    broker: tuple[RedisServer, subprocess.Popen[bytes]],
    ledger: RedisServer,
    tmp_path: Path,
    record_property: Figures,
) -> None:
    server, _proc = broker
    env = _env(api_env, server.broker_url, server.backend_url, ledger)
    url = env["APPLIANCE_DATABASE_URL"]
    admin = server.client()
    stop = threading.Event()
    killed: list[int] = []

    def kill_clients() -> None:
        # Every normal connection (the worker's broker and backend clients, publishers);
        # pub/sub ones are not "normal", and this connection itself is skipped.
        while not stop.wait(KILL_INTERVAL):
            with contextlib.suppress(redis.RedisError):
                killed.append(int(admin.execute_command("CLIENT", "KILL", "TYPE", "normal")))

    with _worker(env, tmp_path / "worker.log") as worker:
        ids = publish_batch(env, LOAD, seconds=0.05)
        killer = threading.Thread(target=kill_clients, daemon=True)
        started = time.monotonic()
        killer.start()
        try:
            wait_until(_done(url, ids), 240, f"all {LOAD} tasks SUCCESS under CLIENT KILL")
        finally:
            stop.set()
            killer.join(10)
        elapsed = round(time.monotonic() - started, 1)
        assert sum(killed) > 0, "no connection was killed"
        _still_consuming(worker, env, url)
    _check_ledger(url, ledger, ids, record_property)
    record_property("client_kills", sum(killed))
    record_property("recovery_seconds", elapsed)


@pytest.mark.timeout(360)
def test_proxy_blackhole_then_reset_the_worker_reconnects_and_loses_nothing(
    api_env: dict[str, str],
    broker: tuple[RedisServer, subprocess.Popen[bytes]],
    ledger: RedisServer,
    tmp_path: Path,
    record_property: Figures,
) -> None:
    server, _proc = broker
    with TcpProxy(server.host, server.port) as proxy:
        via = RedisServer("127.0.0.1", proxy.port)
        env = dict(_env(api_env, via.broker_url, via.backend_url, ledger), **OUTLAST_STALL)
        url = env["APPLIANCE_DATABASE_URL"]
        with _worker(env, tmp_path / "worker.log") as worker:
            ids = _load_until_a_quarter_is_done(env, url)
            proxy.blackhole()
            # Longer than the socket timeout and than kombu's half-open BRPOP check
            # (brpop_timeout 1 s + health_check_interval), so every client notices.
            blackhole = C.REDIS_SOCKET_TIMEOUT + C.REDIS_HEALTH_CHECK_INTERVAL / 2
            time.sleep(blackhole)  # the fault
            reset = proxy.reset()
            reset_at = time.monotonic()
            assert reset > 0
            wait_until(_done(url, ids), 240, f"all {LOAD} tasks SUCCESS after the reset")
            recovery = round(time.monotonic() - reset_at, 1)
            _still_consuming(worker, env, url)
    _check_ledger(url, ledger, ids, record_property)
    record_property("blackhole_seconds", blackhole)
    record_property("reset_sockets", reset)
    record_property("recovery_seconds", recovery)
