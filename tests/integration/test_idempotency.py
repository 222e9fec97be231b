"""Idempotent tasks: the body runs once per key, duplicates get the first result.

demo.charge is idempotent by order id (appliance.idempotency, a SET NX key on the
broker's Redis under `appliance:idem:`).
"""

from __future__ import annotations

import appliance
from appliance import api
from appliance.idempotency import idem_key
from tests.helpers.processes import wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def test_the_same_message_delivered_twice_runs_the_body_once(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    """Given the identical raw message twice on the queue list (as a redelivery leaves
    it), when a worker runs both, then the body runs once and both end with its result."""
    task_id = appliance.submit("demo.charge", args=["order-1", 25])
    redis = clean_redis.client()
    (raw,) = redis.lrange("default", 0, -1)
    redis.lpush("default", raw)
    assert redis.llen("default") == 2

    worker = start_worker(api_env, "-c", "1")
    wait_until(
        lambda: worker.output().count(f"demo.charge[{task_id}] succeeded") == 2,
        60,
        "both deliveries to finish",
    )
    output = worker.output()
    assert output.count("charging order order-1") == 1
    assert "duplicate of" in output and "without running the body" in output
    # (A consumers unit writes final records through its journal, ~0.1 s after the ack.)
    record = wait_until(
        lambda: (r := appliance.get_task(task_id)) and r["status"] == "SUCCESS" and r,
        10,
        "the record SUCCESS",
    )
    assert record["result"]["order_id"] == "order-1"
    assert redis.ttl(idem_key("demo.charge", "order-1")) > 0


def test_a_second_submit_with_the_same_key_gets_the_first_result(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    """Given demo.charge keyed by order id, when the same order is submitted twice (two
    task ids), then both records hold the same charge; another order is charged anew;
    and a charge that fails leaves no key behind, so a corrected retry can run."""
    start_worker(api_env, "-c", "2")
    first = api.wait(appliance.submit("demo.charge", args=["order-2", 10]), 60)
    second_id = appliance.submit("demo.charge", args=["order-2", 10])
    assert api.wait(second_id, 60) == first
    record = appliance.get_task(second_id)
    assert record is not None and record["result"] == first
    other = api.wait(appliance.submit("demo.charge", args=["order-3", 10]), 60)
    assert other["charge_id"] != first["charge_id"]

    refused = appliance.submit("demo.charge", args=["order-4", 0])
    wait_until(
        lambda: (appliance.get_task(refused) or {}).get("status") == "FAILURE", 60, "FAILURE"
    )
    assert clean_redis.client().exists(idem_key("demo.charge", "order-4")) == 0
