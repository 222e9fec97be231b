"""Celery's remote control against a real consumers unit while its consumers run tasks.

A consumer runs its task in its event loop's thread; its mailbox is a thread of its own
(appliance/worker/consumers/mailbox.py), so `celery inspect` and `celery control` get an
answer from every consumer within Celery's default 1 s reply timeout, revoke with
terminate goes through the parent's kill (REVOKED, acked), a plain revoke of a running
task is not reported REVOKED by the idle consumers (the task ends SUCCESS everywhere), and
shutdown stops the unit. pool_grow / pool_shrink / autoscale say why they cannot work, on
both topologies (prefork grows its pool).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

import appliance
from appliance import api
from appliance.celery_app import app
from appliance.worker import remote_control
from tests.helpers.processes import ApplianceProcess, is_node_of, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory

LONG = 20.0  # seconds each long task sleeps


def _consumers(env: dict[str, str]) -> dict[str, str]:
    return dict(env, APPLIANCE_WORKER_TOPOLOGY="consumers")


def _consumer_pids(worker: ApplianceProcess) -> set[int]:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def _status(task_id: str) -> str | None:
    return (appliance.get_task(task_id) or {}).get("status")


def _celery(env: dict[str, str], *args: str) -> tuple[Any, float]:
    """The real celery command line on the appliance's app (its default 1 s timeout):
    its JSON output, and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "appliance.celery_app:app", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout), took


def _merged(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {node: reply for one in replies or [] for node, reply in one.items()}


def _startup_seconds(env: dict[str, str]) -> float:
    """What the celery command line takes to start and load the app, before it asks."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import celery.bin.celery, appliance.celery_app"],
        env=env,
        check=True,
        timeout=60,
    )
    return time.monotonic() - started


def test_every_consumer_answers_inspect_and_control_while_it_runs_a_task(
    api_env: dict[str, str],
    start_worker: WorkerFactory,
    clean_redis: RedisServer,
    record_property: Any,
) -> None:
    env = _consumers(api_env)
    worker = start_worker(env, "-c", "2")
    first, second = ids = [appliance.submit("demo.sleep", args=[LONG]) for _ in range(2)]
    wait_until(lambda: all(_status(i) == "STARTED" for i in ids), 30, "both tasks STARTED")

    # `celery inspect active`, the real command line: both consumers answer with their task.
    active, took = _celery(env, "inspect", "active")
    record_property("inspect_active_seconds", round(took, 2))
    nodes = sorted(active)
    assert len(nodes) == 2 and all(is_node_of("default", n) for n in nodes), active
    running = {task["id"]: task for tasks in active.values() for task in tasks}
    assert set(running) == {first, second}
    pids = _consumer_pids(worker)
    for task in running.values():
        assert task["name"] == "demo.sleep" and task["args"] == [LONG]
        assert task["worker_pid"] in pids and time.time() - task["time_start"] < 60
    startup = _startup_seconds(env)
    assert took - startup < 2, f"celery inspect active took {took:.1f}s ({startup:.1f}s start)"

    # The rest of the inspect family and ping: both nodes answer within the 1 s timeout
    # (each call returns once both did), while both still run their task.
    inspect = app.control.inspect(timeout=1, limit=2)
    for method in ("ping", "reserved", "scheduled", "revoked", "stats", "registered",
                   "active_queues", "conf"):  # fmt: skip
        replies = getattr(inspect, method)()
        assert sorted(replies or {}) == nodes, (method, replies)
    stats = inspect.stats()
    assert {stats[n]["pid"] for n in nodes} == pids
    queried = inspect.query_task(first, second)
    assert {task_id for reply in queried.values() for task_id in reply} == {first, second}
    assert all(state == "active" for r in queried.values() for state, _ in r.values())

    # The control family answers too; what changes a consumer's state waits for its loop.
    def control(name: str, **arguments: Any) -> dict[str, Any]:
        replies = app.control.broadcast(name, arguments=arguments, reply=True, timeout=1, limit=2)
        merged = _merged(replies)
        assert sorted(merged) == nodes, (name, replies)
        return merged

    assert all("ok" in r for r in control("rate_limit", task_name="demo.add",
                                          rate_limit="1000/s").values())  # fmt: skip
    assert all("ok" in r for r in control("time_limit", task_name="demo.add",
                                          soft=50, hard=60).values())  # fmt: skip
    assert all("ok" in r for r in control("add_consumer", queue="low").values())
    assert all("ok" in r for r in control("cancel_consumer", queue="low").values())
    for name in ("pool_grow", "pool_shrink", "autoscale"):
        assert set(map(str, control(name).values())) == {
            str({"error": remote_control.FIXED_CONSUMERS})
        }

    # Flower's Terminate: Celery's revoke with terminate. The parent kills the consumer.
    assert all(_status(i) == "STARTED" for i in ids)  # all of the above while both ran
    replies = _merged(
        app.control.revoke(first, terminate=True, signal="SIGTERM", reply=True, limit=2)
    )
    assert sorted(replies) == nodes
    assert sorted(r["ok"] for r in replies.values()) == sorted(
        [f"terminate: {first}", "terminate: tasks unknown"]
    )
    wait_until(lambda: _status(first) == "REVOKED", 30, "the terminated task's record REVOKED")
    assert AsyncResult(first, app=app).state == "REVOKED"
    assert api.wait(second, 60) == LONG  # the other one ran on
    wait_until(lambda: _status(second) == "SUCCESS", 30, "the other record SUCCESS")
    assert AsyncResult(first, app=app).state == "REVOKED" and _status(first) == "REVOKED"
    broker = clean_redis.client()
    assert broker.hlen("unacked") == 0 and broker.llen("default") == 0  # both acked
    assert "Traceback" not in worker.output()
    assert worker.proc.poll() is None and len(_consumer_pids(worker)) == 2  # replaced


def test_a_plain_revoke_of_a_running_task_lets_it_end_success_everywhere(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    env = _consumers(api_env)
    start_worker(env, "-c", "2")  # one consumer runs it, the other is idle
    task_id = appliance.submit("demo.sleep", args=[4])
    wait_until(lambda: _status(task_id) == "STARTED", 30, "the task STARTED")
    result = AsyncResult(task_id, app=app)
    result.revoke()  # the stock client's revoke, broadcast to both consumers
    states: set[str] = set()

    def finished() -> bool:
        states.add(result.state)  # what a waiting client sees, every 50 ms
        return bool(result.ready())

    wait_until(finished, 30, "the revoked task to finish")
    assert "REVOKED" not in states and result.get(timeout=10) == 4
    wait_until(lambda: _status(task_id) == "SUCCESS", 30, "the record SUCCESS")
    assert result.state == "SUCCESS"


def test_a_revoke_of_a_queued_task_while_every_consumer_is_busy_is_honoured(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    env = _consumers(api_env)
    start_worker(env, "-c", "1")
    busy = appliance.submit("demo.sleep", args=[3])
    wait_until(lambda: _status(busy) == "STARTED", 30, "the first task STARTED")
    queued = appliance.submit("demo.add", args=[1, 1])
    AsyncResult(queued, app=app).revoke()
    with pytest.raises(TaskRevokedError):  # once the consumer takes its message
        AsyncResult(queued, app=app).get(timeout=30)
    wait_until(lambda: _status(queued) == "REVOKED", 30, "the queued record REVOKED")
    assert api.wait(busy, 30) == 3


def test_shutdown_of_a_consumer_node_drains_and_stops_the_unit(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    env = _consumers(api_env)
    worker = start_worker(env, "-c", "2")
    task_id = appliance.submit("demo.sleep", args=[2])
    wait_until(lambda: _status(task_id) == "STARTED", 30, "the task STARTED")
    nodes = sorted(app.control.inspect(timeout=1).ping() or {})
    assert len(nodes) == 2
    app.control.shutdown(destination=nodes[:1])
    assert worker.proc.wait(60) == 0  # the whole unit, once its task ended
    assert AsyncResult(task_id, app=app).state == "SUCCESS"
    wait_until(lambda: _status(task_id) == "SUCCESS", 30, "the record SUCCESS")
    assert "stopping the whole unit" in worker.output()


def test_prefork_grows_its_pool_and_says_why_it_does_not_autoscale(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(dict(api_env, APPLIANCE_WORKER_TOPOLOGY="prefork"), "-c", "1")
    grown = _merged(app.control.pool_grow(1, reply=True, timeout=1))
    assert list(grown.values()) == [{"ok": "pool will grow"}]
    assert api.wait(appliance.submit("demo.add", args=[2, 3]), 30) == 5
    scaled = _merged(app.control.autoscale(4, 1, reply=True, timeout=1))
    assert list(scaled.values()) == [{"error": remote_control.NO_AUTOSCALE}]
