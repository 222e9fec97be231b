"""The worker under a supervisor: sd_notify, a watchdog that means progress, heartbeats, drain.

A notify peer (a unix datagram socket the test owns) stands in for systemd.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import appliance
from appliance import api
from appliance.health.checks import read_heartbeats
from appliance.health.resp import Resp
from appliance.worker import heartbeat
from tests.helpers.notify import NotifyPeer
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server
from tests.integration import probe_tasks
from tests.integration.conftest import WorkerFactory

WATCHDOG_USEC = 2_000_000  # systemd would ping-check every 2 s; we must ping every 1 s


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[NotifyPeer]:
    notify = NotifyPeer(tmp_path / "notify.sock")
    yield notify
    notify.close()


def _notify_env(env: dict[str, str], peer: NotifyPeer) -> dict[str, str]:
    return dict(env, NOTIFY_SOCKET=str(peer.path), WATCHDOG_USEC=str(WATCHDOG_USEC))


def test_ready_watchdog_status_and_stopping(
    appliance_env: dict[str, str], peer: NotifyPeer, tmp_path: Path
) -> None:
    worker = ApplianceProcess(
        ["worker", "-c", "1"], _notify_env(appliance_env, peer), tmp_path / "worker.log"
    )
    try:
        wait_until(lambda: peer.times("READY", "1"), 60, "READY=1")
        # READY is sent by the step that runs after the Tasks step started consuming.
        worker.wait_for_output(" ready.")
        wait_until(lambda: len(peer.times("WATCHDOG", "1")) >= 4, 30, "four WATCHDOG=1 pings")
        pings = peer.times("WATCHDOG", "1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # systemd would never time out
        status = peer.values("STATUS")
        assert any("consuming default,high,low,celery" in s and "done 0" in s for s in status)
        code = worker.terminate(timeout=60)
    finally:
        worker.kill()
    assert code == 0
    stopping = [f for _, f in peer.messages if f.get("STOPPING") == "1"]
    assert stopping and int(stopping[0]["EXTEND_TIMEOUT_USEC"]) > 0


def test_without_notify_socket_nothing_is_sent_and_the_worker_runs(
    appliance_env: dict[str, str], start_worker: WorkerFactory, peer: NotifyPeer
) -> None:
    env = {k: v for k, v in appliance_env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    start_worker(env, "-c", "1")
    assert (
        run_cli(env, "submit", "demo.add", "--args", "[1, 1]", "--wait", "30").stdout.strip() == "2"
    )
    assert peer.messages == []


def test_pool_children_do_not_inherit_the_notify_variables(
    api_env: dict[str, str], start_worker: WorkerFactory, peer: NotifyPeer
) -> None:
    env = dict(_notify_env(api_env, peer), APPLIANCE_TASK_MODULES="tests.integration.probe_tasks")
    start_worker(env, "-c", "1")
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        assert api.wait(appliance.submit(probe_tasks.env.name, args=[name]), 30) is None


def test_watchdog_pings_stop_while_the_broker_connection_is_stuck(
    appliance_env: dict[str, str], peer: NotifyPeer, tmp_path: Path
) -> None:
    # A private Redis we can freeze: SIGSTOP leaves the TCP connection open but silent,
    # the way a dead host or a blackholing firewall does.
    with local_redis_server(tmp_path / "redis") as (server, redis_proc):
        env = dict(
            _notify_env(appliance_env, peer),
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
        )
        worker = ApplianceProcess(["worker", "-c", "1"], env, tmp_path / "worker.log")
        try:
            wait_until(
                lambda: len(peer.times("WATCHDOG", "1")) >= 2, 60, "pings of a healthy worker"
            )
            os.kill(redis_proc.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                # Pings stop: none for well over a watchdog period, i.e. systemd would act.
                wait_until(
                    lambda: (
                        time.monotonic() - max(peer.times("WATCHDOG", "1"))
                        > 3 * WATCHDOG_USEC / 1e6
                    ),
                    60,
                    "the pings to stop",
                )
                silent_since = max(peer.times("WATCHDOG", "1"))
            finally:
                os.kill(redis_proc.pid, signal.SIGCONT)
            # The consumer recovers on its own and the pings resume.
            wait_until(
                lambda: max(peer.times("WATCHDOG", "1")) > silent_since, 90, "pings to resume"
            )
            assert silent_since - frozen_at < 30
            assert (
                run_cli(
                    env, "submit", "demo.add", "--args", "[2, 2]", "--wait", "60"
                ).stdout.strip()
                == "4"
            )
        finally:
            worker.terminate(timeout=60)


def test_watchdog_keeps_pinging_while_long_tasks_hold_every_prefetch_slot(
    api_env: dict[str, str], peer: NotifyPeer, tmp_path: Path
) -> None:
    """No BRPOP is out while the only slot runs a long task: the age of the last BRPOP
    sent must not withhold the pings (else systemd kills a worker whose children all run
    tasks longer than WatchdogSec)."""
    worker = ApplianceProcess(
        ["worker", "-c", "1"], _notify_env(api_env, peer), tmp_path / "worker.log"
    )
    try:
        worker.wait_for_output(" ready.")
        task_id = appliance.submit("demo.sleep", args=[10])
        wait_until(
            lambda: (appliance.get_task(task_id) or {}).get("status") == "STARTED", 30, "STARTED"
        )
        started = time.monotonic()
        assert api.wait(task_id, 60) == 10
        ended = time.monotonic()
        pings = [t for t in peer.times("WATCHDOG", "1") if started - 1 <= t <= ended]
        assert ended - started > 8 and len(pings) >= 6, (ended - started, pings)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
        assert "watchdog ping withheld" not in worker.output()
    finally:
        worker.terminate(timeout=60)


def test_heartbeat_key_reports_the_node_and_disappears_on_clean_stop(
    appliance_env: dict[str, str], clean_redis: RedisServer, tmp_path: Path
) -> None:
    worker = ApplianceProcess(["worker", "-c", "1"], appliance_env, tmp_path / "worker.log")
    client = clean_redis.client()
    try:
        worker.wait_for_output(" ready.")
        assert (
            run_cli(
                appliance_env, "submit", "demo.add", "--args", "[1, 2]", "--wait", "30"
            ).returncode
            == 0
        )
        bad = run_cli(
            appliance_env, "submit", "demo.calculate", "--args", '[1, 2, "x"]', "--wait", "30"
        )
        assert bad.returncode == 1
        beats = wait_until(
            lambda: [b for b in _heartbeats(clean_redis) if b["failed"] == 1],
            30,
            "a heartbeat with counts",
        )
        (beat,) = beats
        assert beat["group"] == "default"
        assert beat["queues"] == ["default", "high", "low", "celery"]
        assert (beat["succeeded"], beat["failed"]) == (1, 1)
        assert "unknown operation" in beat["last_error"]
        # The worker's main process, or the consumer that writes it (consumers topology).
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        assert beat["pid"] in (worker.pid, *map(int, children)) and beat["rss_kib"] > 0
        ttl = client.ttl(heartbeat.worker_key(beat["hostname"]))
        assert 0 < ttl <= 30
    finally:
        assert worker.terminate(timeout=60) == 0
    assert _heartbeats(clean_redis) == []


def test_sigterm_during_a_task_lets_it_finish_and_requeues_the_waiting_ones(
    api_env: dict[str, str], clean_redis: RedisServer, tmp_path: Path
) -> None:
    worker = ApplianceProcess(["worker", "-c", "1"], api_env, tmp_path / "worker.log")
    try:
        worker.wait_for_output(" ready.")
        sleeper = appliance.submit("demo.sleep", args=[5])
        waiting = [appliance.submit("demo.add", args=[i, i]) for i in range(3)]
        wait_until(
            lambda: (appliance.get_task(sleeper) or {}).get("status") == "STARTED", 30, "STARTED"
        )
        code = worker.terminate(timeout=60)  # SIGTERM to the main process only
    finally:
        worker.kill()
    assert code == 0
    record = appliance.get_task(sleeper)
    assert record is not None and record["status"] == "SUCCESS", record
    assert "WorkerLostError" not in worker.output()
    # Nothing else ran, and every waiting message is back in the queue for the next worker.
    assert [appliance.get_task(t)["status"] for t in waiting] == ["PENDING"] * 3  # type: ignore[index]
    queued = [json.loads(m)["headers"]["id"] for m in clean_redis.client().lrange("default", 0, -1)]
    assert sorted(queued) == sorted(waiting)


def _heartbeats(server: RedisServer) -> list[dict[str, Any]]:
    with Resp(server.url()) as conn:
        return read_heartbeats(conn)
