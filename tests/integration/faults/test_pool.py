"""Fault injection in the pool: lost children, recycling and a graceful stop under load.

Rows 2-4 of the fault matrix (docs/reliability.md). Real redis-server processes (the
broker, and a second one for the ledger of executions), real `appliance worker` processes,
real SQLite records.
The ledger: every accepted id must end SUCCESS in the task records, or FAILURE and in the
dead-letter store for a poison task; lost = 0 is asserted. `probe.tally` and `probe.die`
count each execution in a hash on the ledger Redis, which gives duplicates and deliveries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.broker import deadletter
from appliance.records import store
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer

LOAD = 300
BOUND = 3  # APPLIANCE_MAX_WORKER_LOST in these tests
ETA_TASKS = 10  # row 4: prefetched (held for their countdown) when the stop lands
HOWS = ("sigkill", "sys_exit", "os_exit")
# How billiard names each end, as the FAILURE reason quotes it.
ENDS = {"sigkill": "signal 9 (SIGKILL)", "sys_exit": "exitcode 3", "os_exit": "exitcode 3"}

Record = dict[str, Any]
Figures = Callable[[str, object], None]

_PRODUCER = """
import json, sys
import appliance
calls = json.load(sys.stdin)
print(json.dumps([appliance.submit(c[0], args=c[1], **(c[2:] or [{}])[0]) for c in calls]))
"""

Call = tuple[str, list[Any]] | tuple[str, list[Any], dict[str, Any]]


def _publish(env: dict[str, str], calls: list[Call]) -> list[str]:
    """Submit (name, args[, submit options]) from a producer process, in order; their ids."""
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCER],
        input=json.dumps(calls),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    ids: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return ids


def _tallies(count: int, seconds: float, **options: Any) -> list[Call]:
    return [("probe.tally", [seconds], options)] * count


def _records(url: str, ids: list[str]) -> dict[str, Record]:
    found = {r["id"]: r for r in store.list_records(url, limit=100_000)}  # every record
    return {i: found.get(i) or {"id": i, "status": "MISSING", "error": None} for i in ids}


def _statuses(url: str, ids: list[str]) -> dict[str, str]:
    return {i: r["status"] for i, r in _records(url, ids).items()}


def _all(url: str, ids: list[str], status: str) -> Callable[[], bool]:
    return lambda: all(s == status for s in _statuses(url, ids).values())


def _executions(ledger: RedisServer) -> dict[str, int]:
    counts = ledger.client().hgetall("appliance-test:tally")
    return {k.decode(): int(v) for k, v in counts.items()}


def _duplicates(ledger: RedisServer, ids: list[str]) -> int:
    executions = _executions(ledger)
    return sum(executions.get(i, 0) - 1 for i in ids if executions.get(i, 0) > 1)


def _lost(url: str, ids: list[str]) -> list[str]:
    """Ids that are not SUCCESS: the ledger's lost ones once the load is over."""
    return [i for i, s in _statuses(url, ids).items() if s != "SUCCESS"]


def _errors(url: str, ids: list[str]) -> list[str]:
    return [f"{i}: {r['error']}" for i, r in _records(url, ids).items() if r["error"]]


# Both worker topologies keep the same promises: prefork, and consumer processes under
# a supervising parent (appliance/worker/consumers/supervisor.py).
TOPOLOGIES = ("prefork", "consumers")
RECYCLED = {"prefork": "replacing pool child", "consumers": "replacing consumer"}


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(api_env: dict[str, str], ledger: RedisServer, topology: str) -> dict[str, str]:
    return dict(
        api_env,
        APPLIANCE_TASK_MODULES="tests.integration.probe_tasks",
        APPLIANCE_TEST_LEDGER_URL=ledger.url(),
        APPLIANCE_MAX_WORKER_LOST=str(BOUND),
        APPLIANCE_WORKER_TOPOLOGY=topology,
    )


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., ApplianceProcess]]:
    """Start `appliance worker` processes; each is stopped (and its group killed) at the end."""
    started: list[ApplianceProcess] = []

    def start(env: dict[str, str], *args: str) -> ApplianceProcess:
        proc = ApplianceProcess(["worker", *args], env, tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        proc.wait_for_output(" ready.", timeout=120)
        return proc

    yield start
    for proc in started:
        proc.terminate(timeout=120)


# Row 2 ------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_lost_children_are_retried_up_to_the_bound_then_dead_lettered_and_the_queue_flows(
    env: dict[str, str],
    clean_redis: RedisServer,
    ledger: RedisServer,
    tmp_path: Path,
    workers: Callable[..., ApplianceProcess],
    record_property: Figures,
) -> None:
    url = env["APPLIANCE_DATABASE_URL"]
    worker = workers(env, "-c", "2")
    # Poison tasks (their child dies on every delivery) and tasks whose child dies only on
    # the first delivery, for each way a child can end, in the middle of a normal load.
    cures = {how: tmp_path / f"cure-{how}" for how in HOWS}  # created only by the "operator"
    poison_calls = [("probe.die", [str(cures[how]), how]) for how in HOWS]
    once_calls = [("probe.die", [str(tmp_path / f"marker-{how}"), how, True]) for how in HOWS]
    ids = _publish(env, [*_tallies(LOAD // 2, 0.02), *poison_calls, *once_calls])
    ids += _publish(env, _tallies(LOAD - LOAD // 2, 0.02))
    poisons = dict(zip(HOWS, ids[LOAD // 2 : LOAD // 2 + 3], strict=True))
    onces = dict(zip(HOWS, ids[LOAD // 2 + 3 : LOAD // 2 + 6], strict=True))
    normal = [i for i in ids if i not in poisons.values() and i not in onces.values()]
    started = time.monotonic()

    wait_until(_all(url, list(poisons.values()), "FAILURE"), 300, "the poison tasks FAILURE")
    wait_until(_all(url, normal + list(onces.values()), "SUCCESS"), 300, "the rest SUCCESS")
    broker = clean_redis.client()
    # Nothing is left to redeliver: not on the queue, not unacked.
    wait_until(lambda: broker.llen("default") + broker.hlen("unacked") == 0, 60, "empty broker")
    elapsed = round(time.monotonic() - started, 1)
    executions = _executions(ledger)
    records = _records(url, list(poisons.values()))
    for how, task_id in poisons.items():
        assert executions[task_id] == BOUND, (how, executions[task_id])
        error = records[task_id]["error"]
        assert f"lost {BOUND} times (last: {ENDS[how]}); not redelivered" in error, error
        letter = deadletter.get(broker, task_id)
        assert letter is not None and letter.requeueable and letter.queue == "default"
        assert letter.reason == error
    assert {how: executions[i] for how, i in onces.items()} == dict.fromkeys(HOWS, 2)
    assert _errors(url, normal + list(onces.values())) == []
    assert _duplicates(ledger, normal) == 0
    assert worker.proc.poll() is None, "the worker is alive"
    log = worker.output()
    assert log.count("not redelivered, dead-lettered") == len(HOWS)
    assert log.count("; requeued (") == len(HOWS) * (BOUND - 1) + len(HOWS)
    assert "Traceback" not in log

    # The operator fixes the cause and requeues the dead letter: it runs, with its raw
    # message intact, and succeeds.
    fixed = poisons["sigkill"]
    cures["sigkill"].touch()
    requeued = run_cli(env, "deadletter", "requeue", fixed)
    assert requeued.returncode == 0, requeued.stderr
    wait_until(_all(url, [fixed], "SUCCESS"), 120, "the requeued dead letter SUCCESS")
    assert _executions(ledger)[fixed] == BOUND + 1
    assert deadletter.get(broker, fixed) is None

    finals = _statuses(url, ids)
    assert [i for i in ids if finals[i] != "SUCCESS" and i not in poisons.values()] == []
    record_property("tasks", len(ids))
    record_property("lost", 0)
    record_property("dead_lettered", len(HOWS))
    record_property("deliveries", f"{BOUND} per poison task, 2 per die-once task")
    record_property("child_losses", len(HOWS) * BOUND + len(HOWS))
    record_property("duplicates", _duplicates(ledger, normal))
    record_property("seconds", elapsed)


# Row 3 ------------------------------------------------------------------------------


def _recycling_run(
    env: dict[str, str],
    ledger: RedisServer,
    workers: Callable[..., ApplianceProcess],
    calls: list[Call],
    *worker_args: str,
) -> tuple[list[str], ApplianceProcess, float]:
    url = env["APPLIANCE_DATABASE_URL"]
    worker = workers(env, "-c", "2", *worker_args)
    started = time.monotonic()
    ids = _publish(env, calls)
    wait_until(_all(url, ids, "SUCCESS"), 420, f"all {len(ids)} tasks SUCCESS")
    elapsed = round(time.monotonic() - started, 1)
    assert _lost(url, ids) == []
    assert _errors(url, ids) == []  # not one WorkerLostError (nor any other) on a record
    assert "WorkerLostError" not in worker.output()
    assert "exited prematurely" not in worker.output()
    assert _duplicates(ledger, ids) == 0
    assert set(_executions(ledger)) >= set(ids)
    assert worker.proc.poll() is None
    return ids, worker, elapsed


@pytest.mark.timeout(600)
def test_recycling_after_every_task_under_load_loses_nothing(
    env: dict[str, str],
    ledger: RedisServer,
    workers: Callable[..., ApplianceProcess],
    record_property: Figures,
) -> None:
    ids, worker, elapsed = _recycling_run(
        env, ledger, workers, _tallies(LOAD, 0.01), "--max-tasks-per-child", "1"
    )
    recycles = worker.output().count(RECYCLED[env["APPLIANCE_WORKER_TOPOLOGY"]])
    assert recycles >= len(ids) * 0.9, recycles  # every child ran one task and retired
    record_property("tasks", len(ids))
    record_property("lost", 0)
    record_property("recycles", recycles)
    record_property("duplicates", 0)
    record_property("seconds", elapsed)


@pytest.mark.timeout(600)
def test_recycling_above_a_memory_limit_under_load_loses_nothing(
    env: dict[str, str],
    ledger: RedisServer,
    workers: Callable[..., ApplianceProcess],
    record_property: Figures,
) -> None:
    # A fresh child owns ~6 MB; each task keeps 2 MiB more, so with a 32 MiB limit a
    # child is replaced every dozen tasks or so.
    limit_kib = 32 * 1024
    calls: list[Call] = [("probe.hold_and_tally", [2, 0.01])] * LOAD
    ids, worker, elapsed = _recycling_run(
        env,
        ledger,
        workers,
        calls,
        "--max-tasks-per-child",
        "0",
        "--max-memory-per-child",
        str(limit_kib),
    )
    log = worker.output()
    recycles = log.count(f"is above the limit {limit_kib} KiB")
    assert recycles >= 5, recycles
    record_property("tasks", len(ids))
    record_property("lost", 0)
    record_property("recycles", recycles)
    record_property("duplicates", 0)
    record_property("seconds", elapsed)


# Row 4 ------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_sigterm_under_load_drains_exits_0_and_a_restart_finishes_everything_once(
    env: dict[str, str],
    clean_redis: RedisServer,
    ledger: RedisServer,
    workers: Callable[..., ApplianceProcess],
    record_property: Figures,
) -> None:
    url = env["APPLIANCE_DATABASE_URL"]
    worker = workers(env, "-c", "2")
    # Tasks with a countdown are prefetched: the worker holds them unacked until due.
    ids = _publish(env, _tallies(ETA_TASKS, 0.02, countdown=20) + _tallies(LOAD, 0.1))
    wait_until(
        lambda: list(_statuses(url, ids).values()).count("SUCCESS") >= LOAD // 4,
        180,
        "a quarter done",
    )
    broker = clean_redis.client()
    # Taken by the worker: the prefetched ones and those running (stop while one runs).
    in_flight = wait_until(
        lambda: (held := int(broker.hlen("unacked"))) > ETA_TASKS and held,
        60,
        "tasks running besides the prefetched ones",
        interval=0.005,
    )
    stopping = time.monotonic()
    code = worker.terminate(timeout=120)  # SIGTERM to the main process only
    stop_seconds = round(time.monotonic() - stopping, 1)
    assert code == 0, worker.output()[-3000:]
    # Drained: whatever ran finished; whatever did not start is back on the queue.
    statuses = _statuses(url, ids)
    unfinished = [i for i, s in statuses.items() if s != "SUCCESS"]
    assert {statuses[i] for i in unfinished} <= {"PENDING"}, {statuses[i] for i in unfinished}
    assert broker.hlen("unacked") == 0
    assert broker.llen("default") == len(unfinished)
    assert ETA_TASKS < len(unfinished) < len(ids)  # the stop landed mid-load

    restarted = workers(env, "-c", "2")
    wait_until(_all(url, ids, "SUCCESS"), 300, f"all {len(ids)} SUCCESS after the restart")
    recovery = round(time.monotonic() - stopping, 1)
    assert _lost(url, ids) == []
    assert _errors(url, ids) == []
    assert _duplicates(ledger, ids) == 0
    for log in (worker.output(), restarted.output()):
        assert "WorkerLostError" not in log and "exited prematurely" not in log
    record_property("tasks", len(ids))
    record_property("lost", 0)
    record_property("in_flight_at_sigterm", in_flight)
    record_property("stop_seconds", stop_seconds)
    record_property("recovery_seconds", recovery)
    record_property("duplicates", 0)
