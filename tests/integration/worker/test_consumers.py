"""The consumers topology (appliance/worker/consumers/) against a real Redis and real processes.

What only this topology does: its parent settles a dead consumer's message at once
(instead of the visibility timeout), kills a consumer at the hard time limit and fails
its task, its consumers store results and record writes through the ack's script (the
record journal) and the parent flushes that journal. The promises both topologies keep
are run on both in faults/test_pool.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

import appliance
from appliance import api
from appliance.errors import TaskFailedError
from appliance.records import store
from tests.helpers.processes import ApplianceProcess, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _consumers(env: dict[str, str], **extra: str) -> dict[str, str]:
    return dict(env, APPLIANCE_WORKER_TOPOLOGY="consumers", **extra)


def _consumer_pids(worker: ApplianceProcess) -> list[int]:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _status(url: str, task_id: str) -> str | None:
    record = store.get_record(url, task_id)
    return None if record is None else str(record["status"])


def test_consumers_drain_with_results_and_records_carried_by_the_ack(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    env = _consumers(api_env)
    url = env["APPLIANCE_DATABASE_URL"]
    worker = start_worker(env, "-c", "2")
    assert len(_consumer_pids(worker)) == 2
    broker = clean_redis.client()
    broker.config_resetstat()
    ids = appliance.submit_many("demo.add", [{"args": [i, i]} for i in range(300)])
    assert [api.wait(task_id, 60) for task_id in ids] == [2 * i for i in range(300)]
    wait_until(
        lambda: (
            all(r["status"] == "SUCCESS" for r in store.list_records(url, limit=1000))
            and len(store.list_records(url, limit=1000)) == 300
        ),
        30,
        "every record SUCCESS",
    )
    # Each final record was pushed onto the unit's journal (by the ack's script) and the
    # parent moved the journal into the database: it is empty now.
    stats = broker.info("commandstats")
    assert stats["cmdstat_rpush"]["calls"] >= 300, stats.get("cmdstat_rpush")
    assert stats["cmdstat_ltrim"]["calls"] >= 1
    assert broker.keys("appliance:records:journal:*") == []
    assert broker.hlen("unacked") == 0 and broker.llen("default") == 0
    record = store.get_record(url, ids[-1])
    assert record is not None
    assert str(record["worker"]).startswith("default.")  # the consumer's node name
    assert record["started_at"] is not None and record["finished_at"] is not None
    assert record["started_at"] <= record["finished_at"]
    assert "Traceback" not in worker.output()


def test_a_task_count_retirement_hands_over_to_a_successor_started_ahead(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    # At 40 tasks a consumer (limit 40, jittered) is told its retirement 4 tasks ahead:
    # the parent forks the successor then, which starts and waits at its gate until the
    # retiring one's X opens it.
    env = _consumers(api_env)
    url = env["APPLIANCE_DATABASE_URL"]
    worker = start_worker(env, "-c", "2", "--max-tasks-per-child", "40", "--loglevel", "debug")
    ids = appliance.submit_many("demo.add", [{"args": [i, 1]} for i in range(400)])
    assert [api.wait(task_id, 120) for task_id in ids] == [i + 1 for i in range(400)]
    wait_until(lambda: all(_status(url, task_id) == "SUCCESS" for task_id in ids), 30, "records")
    output = worker.output()
    retired = output.count("replacing consumer")
    handed = output.count("retires; successor pid")
    assert retired >= 8, output[-3000:]
    # Every retirement but the last ones (tasks ran out) handed over to a successor
    # forked at its P report (whether it was ready by then is up to the machine).
    assert handed >= retired - 2
    assert "exited" not in output and "Traceback" not in output
    # Each retired consumer is gone. The unit keeps its two consumers, plus a successor
    # still waiting at its gate when the tasks ran out inside its hand-over window.
    gone = {int(pid) for pid in re.findall(r"replacing consumer (\d+)", output)}
    wait_until(lambda: not gone & set(_consumer_pids(worker)), 30, "every retired consumer gone")
    assert 2 <= len(_consumer_pids(worker)) <= 4
    broker = clean_redis.client()
    assert broker.hlen("unacked") == 0 and broker.llen("default") == 0


def test_a_killed_consumers_task_is_requeued_at_once_and_the_unit_replaces_it(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    # The visibility timeout stays at its hour: only the parent can bring the task back.
    env = _consumers(api_env)
    url = env["APPLIANCE_DATABASE_URL"]
    worker = start_worker(env, "-c", "1")
    (consumer,) = _consumer_pids(worker)
    task_id = appliance.submit("demo.sleep", args=[2])
    wait_until(lambda: _status(url, task_id) == "STARTED", 30, "the task STARTED")
    killed_at = time.monotonic()
    os.kill(consumer, signal.SIGKILL)
    assert api.wait(task_id, 60) == 2
    assert time.monotonic() - killed_at < 30  # not the visibility timeout
    wait_until(lambda: _status(url, task_id) == "SUCCESS", 30, "the record SUCCESS")
    log = worker.output()
    assert "exited (signal 9 (SIGKILL)); replacing it" in log
    assert "lost (signal 9 (SIGKILL)); requeued (1 of 3)" in log
    assert worker.proc.poll() is None
    assert _consumer_pids(worker) != [consumer]
    assert clean_redis.client().hlen("unacked") == 0


def test_the_hard_time_limit_kills_the_consumer_fails_the_task_and_acks_it(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    env = _consumers(api_env)
    url = env["APPLIANCE_DATABASE_URL"]
    worker = start_worker(env, "-c", "1")
    # Catches the soft limit, then cleans up past the hard one.
    task_id = appliance.submit("demo.with_cleanup", args=[60, 60], soft_time_limit=1, time_limit=2)
    wait_until(lambda: _status(url, task_id) == "FAILURE", 60, "the record FAILURE")
    record = store.get_record(url, task_id)
    assert record is not None and "TimeLimitExceeded" in str(record["error"])
    with pytest.raises(TaskFailedError, match="TimeLimitExceeded"):
        api.wait(task_id, 10)  # the result backend says so too
    wait_until(lambda: clean_redis.client().hlen("unacked") == 0, 30, "the message acked")
    assert "Hard time limit (2.0s) exceeded for demo.with_cleanup" in worker.output()
    # The unit serves on with a new consumer.
    assert api.wait(appliance.submit("demo.add", args=[1, 2]), 60) == 3
