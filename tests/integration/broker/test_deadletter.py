"""Messages a worker cannot run end in the dead-letter store, and the worker keeps going.

Stock Celery drops an unknown task name or an undecodable body, and kombu exits on a
garbage queue item; here each is kept with its raw bytes and the queue keeps flowing.
"""

from __future__ import annotations

import json

import appliance
from appliance import api
from appliance.celery_app import app
from tests.helpers.processes import run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _letters(env: dict[str, str]) -> list[dict]:
    result = run_cli(env, "deadletter", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_unknown_task_is_dead_lettered_with_a_failure_record_and_can_be_requeued(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    start_worker(api_env, "-c", "1")
    # A producer that does not check names (plain Celery) publishes a task nobody hosts.
    task_id = app.send_task("no.such.task", args=[1, 2]).id
    letters = wait_until(lambda: _letters(api_env), 30, "a dead letter")
    (letter,) = letters
    assert (letter["id"], letter["task_name"], letter["queue"]) == (
        task_id,
        "no.such.task",
        "default",
    )
    assert "unknown task name" in letter["reason"] and letter["requeueable"]
    record = wait_until(
        lambda: (
            (appliance.get_task(task_id) or {}).get("status") == "FAILURE"
            and appliance.get_task(task_id)
        ),
        30,
        "a FAILURE record",
    )
    assert "dead-lettered" in record["error"]
    # The worker is alive and consuming.
    assert api.wait(appliance.submit("demo.add", args=[2, 2]), 30) == 4
    shown = json.loads(run_cli(api_env, "deadletter", "show", task_id, "--json").stdout)
    assert json.loads(shown["raw"])["headers"]["task"] == "no.such.task"
    requeued = run_cli(api_env, "deadletter", "requeue", task_id)
    assert requeued.returncode == 0 and "requeued" in requeued.stdout
    # Still unknown to the worker: it comes straight back, never lost.
    wait_until(
        lambda: [d["id"] for d in _letters(api_env)] == [task_id], 30, "the letter to come back"
    )


def test_garbage_on_a_queue_list_does_not_stop_the_worker(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    worker = start_worker(api_env, "-c", "1")
    client = clean_redis.client()
    client.lpush("default", b"\x00this is not json")
    client.lpush("default", b'{"looks": "like json but is no message"}')
    wait_until(lambda: len(_letters(api_env)) == 2, 30, "two dead letters")
    assert worker.proc.poll() is None, worker.output()
    assert api.wait(appliance.submit("demo.add", args=[20, 22]), 30) == 42
    raws = {
        json.loads(run_cli(api_env, "deadletter", "show", d["id"], "--json").stdout)["raw"]
        for d in _letters(api_env)
    }
    assert "\x00this is not json" in raws
    garbage_id = _letters(api_env)[0]["id"]
    refused = run_cli(api_env, "deadletter", "requeue", garbage_id)
    assert refused.returncode == 1 and "not a well-formed task message" in refused.stderr
    assert run_cli(api_env, "deadletter", "drop", garbage_id, "--yes").returncode == 0
    assert len(_letters(api_env)) == 1


def test_a_pickle_message_is_refused_and_dead_lettered(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(api_env, "-c", "1")
    task_id = app.send_task("demo.add", args=[1, 2], serializer="pickle").id
    (letter,) = wait_until(lambda: _letters(api_env), 30, "a dead letter")
    assert letter["id"] == task_id
    assert "ContentDisallowed" in letter["reason"] or "pickle" in letter["reason"]
    assert api.wait(appliance.submit("demo.add", args=[1, 2]), 30) == 3
