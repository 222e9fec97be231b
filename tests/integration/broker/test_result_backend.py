"""The result backend stores a state in one round trip and never overwrites a SUCCESS."""

from __future__ import annotations

import json

from celery import Celery

from appliance.broker import result_backend
from tests.helpers.processes import wait_until
from tests.helpers.redis_server import RedisServer


def _backend(server: RedisServer) -> result_backend.RedisBackend:
    result_backend.install()
    app = Celery("t", set_as_current=False, backend=server.backend_url)
    app.conf.result_serializer = "json"
    app.conf.result_expires = 60
    backend = app.backend
    assert isinstance(backend, result_backend.RedisBackend)
    return backend


def test_states_are_stored_announced_and_success_is_final(clean_redis: RedisServer) -> None:
    backend = _backend(clean_redis)
    client = clean_redis.client(clean_redis.db + 1)
    key = "celery-task-meta-t1"
    listener = client.pubsub()
    listener.subscribe(key)
    wait_until(lambda: listener.get_message(timeout=0.1) is not None, 10, "subscribed")

    backend.store_result("t1", None, "STARTED")
    assert backend.get_task_meta("t1")["status"] == "STARTED"
    assert 0 < client.ttl(key) <= 60  # result_expires holds
    backend.store_result("t1", 42, "SUCCESS")
    # A redelivered copy of the task must not turn a success back into STARTED or FAILURE.
    backend.store_result("t1", None, "STARTED")
    backend.store_result("t1", None, "FAILURE")
    stored = json.loads(client.get(key) or b"{}")
    assert (stored["status"], stored["result"], stored["task_id"]) == ("SUCCESS", 42, "t1")

    announced = []
    wait_until(
        lambda: (
            bool(
                (m := listener.get_message(timeout=0.1)) and announced.append(json.loads(m["data"]))
            )
            or len(announced) >= 2
        ),
        10,
        "the two stored states announced",
    )
    assert [m["status"] for m in announced] == ["STARTED", "SUCCESS"]
    listener.close()


def test_a_value_that_is_not_json_is_overwritten(clean_redis: RedisServer) -> None:
    backend = _backend(clean_redis)
    client = clean_redis.client(clean_redis.db + 1)
    client.set("celery-task-meta-t2", b"\x80not json")
    backend.store_result("t2", 1, "SUCCESS")
    assert backend.get_task_meta("t2")["result"] == 1


def test_a_failure_keeps_result_failure_expires(clean_redis: RedisServer) -> None:
    result_backend.install()
    app = Celery("t", set_as_current=False, backend=clean_redis.backend_url)
    app.conf.result_serializer = "json"
    app.conf.result_expires = 3600
    app.conf.result_failure_expires = 30
    backend = app.backend
    client = clean_redis.client(clean_redis.db + 1)

    backend.store_result("ok", 1, "SUCCESS")
    backend.store_result("bad", ValueError("no"), "FAILURE")

    assert 30 < client.ttl("celery-task-meta-ok") <= 3600
    assert 0 < client.ttl("celery-task-meta-bad") <= 30
