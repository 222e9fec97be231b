"""Ack-and-fetch (appliance/broker/transport.py): one Lua round trip acks a message and
tracks the next, on a real redis-server with a real worker.

What must hold: a loaded queue drains without kombu's per-message BRPOP and MULTI/EXEC
pipelines; at every moment each accepted message is on a queue list, in `unacked`, or
done (a SIGKILL never strands a popped message); garbage and revoked messages in the
middle of a loaded queue are handled as on the BRPOP path.
"""

from __future__ import annotations

import json
import os
import signal

import appliance
from appliance.broker import deadletter
from appliance.celery_app import app
from appliance.core import keys
from tests.helpers.processes import wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _done(ids: list[str], status: str = "SUCCESS") -> bool:
    return all((appliance.get_task(i) or {}).get("status") == status for i in ids)


def test_a_loaded_queue_drains_with_one_round_trip_per_message(
    api_env: dict[str, str], clean_redis: RedisServer, start_worker: WorkerFactory
) -> None:
    ids = appliance.submit_many("demo.add", [{"args": [i, 1]} for i in range(300)])
    client = clean_redis.client()
    client.config_resetstat()
    start_worker(api_env, "-c", "2")
    wait_until(lambda: _done(ids), 120, "300 tasks SUCCESS")
    assert [appliance.get_task(i)["result"] for i in ids] == [i + 1 for i in range(300)]  # type: ignore[index]
    wait_until(lambda: client.hlen("unacked") == 0, 30, "every message acked")
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    # Stock kombu: 300 BRPOPs and 600 MULTI/EXEC (track + ack). A few remain here: the
    # first messages, and moments when the queue ran dry.
    assert calls.get("brpop", 0) < 30, calls
    assert calls.get("multi", 0) < 30, calls
    assert calls.get("evalsha", 0) >= 300, calls


def _ids_on_lists(client: object, keys: list[str]) -> set[str]:
    found = set()
    for key in keys:
        for item in client.lrange(key, 0, -1):  # type: ignore[attr-defined]
            found.add(json.loads(item)["headers"]["id"])
    return found


def test_a_sigkill_mid_drain_leaves_every_message_queued_unacked_or_done(
    api_env: dict[str, str], clean_redis: RedisServer, start_worker: WorkerFactory
) -> None:
    ids = appliance.submit_many("demo.add", [{"args": [i, 1]} for i in range(600)])
    client = clean_redis.client()
    worker = start_worker(api_env, "-c", "2")
    backend = app.backend
    wait_until(
        lambda: (
            sum(1 for i in ids if (appliance.get_task(i) or {}).get("status") == "SUCCESS") >= 150
        ),
        120,
        "a quarter of the tasks done",
        0.005,
    )
    os.killpg(worker.pid, signal.SIGKILL)  # main process and pool children at once
    worker.proc.wait(30)
    queued = _ids_on_lists(client, [k.decode() for k in client.keys("default*")])
    unacked = {json.loads(v)[0]["headers"]["id"] for v in client.hvals("unacked")}
    finished = {i for i in ids if backend.get_task_meta(i)["status"] == "SUCCESS"}
    assert set(ids) == queued | unacked | finished, (
        f"stranded: {len(set(ids) - queued - unacked - finished)}"
    )
    assert len(queued) < 450 and finished  # the kill did land mid-drain
    # Every tracked message is restorable exactly as kombu wrote it: [message, exchange, rk].
    for raw in client.hvals("unacked"):
        message, exchange, routing_key = json.loads(raw)
        assert message["properties"]["delivery_info"]["routing_key"] == routing_key
        assert exchange == message["properties"]["delivery_info"]["exchange"]


def test_garbage_and_revoked_messages_inside_a_loaded_queue(
    api_env: dict[str, str], clean_redis: RedisServer, start_worker: WorkerFactory
) -> None:
    client = clean_redis.client()
    first = appliance.submit_many("demo.add", [{"args": [i, 0]} for i in range(50)])
    client.lpush("default", b"\x00not json", b'{"looks": "like json but is no message"}')
    revoked = appliance.submit_many("demo.add", [{"args": [i, 0]} for i in range(200)])
    last = appliance.submit_many("demo.add", [{"args": [i, 0]} for i in range(50)])
    # Revoked before any worker runs: each is acked as it is received, one after the other.
    client.zadd(keys.REVOKED_KEY, dict.fromkeys(revoked, 1e10))
    worker = start_worker(api_env, "-c", "2")
    wait_until(lambda: _done(first + last), 120, "the live tasks SUCCESS")
    wait_until(lambda: client.llen("default") == 0, 60, "the queue drained")
    wait_until(lambda: client.hlen("unacked") == 0, 30, "every message acked")
    raws = {letter.raw for letter in deadletter.list_letters(client)}
    assert raws == {b"\x00not json", b'{"looks": "like json but is no message"}'}, raws
    assert worker.proc.poll() is None, worker.output()[-3000:]
    assert "RecursionError" not in worker.output()
    assert not any((appliance.get_task(i) or {}).get("status") == "SUCCESS" for i in revoked), (
        "a revoked task ran"
    )
