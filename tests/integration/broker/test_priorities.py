"""Priorities on Redis: kombu keeps one list per priority step and pops 0 first.

Given one worker process, when a high-priority task is published behind a queue of
low-priority ones, then it starts next, before the low-priority queue has drained
(the records' started_at say so).
"""

from __future__ import annotations

from datetime import datetime

import appliance
from appliance import api
from tests.helpers.processes import wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory

LOW, HIGH = 9, 0  # Redis semantics: 0 is served first


def _started(task_id: str) -> datetime | None:
    stamp = (appliance.get_task(task_id) or {}).get("started_at")
    return datetime.fromisoformat(stamp) if stamp else None


def test_a_high_priority_task_overtakes_a_queue_of_low_priority_ones(
    api_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    start_worker(api_env, "-c", "1")
    lows = [appliance.submit("demo.sleep", args=[0.5], priority=LOW) for _ in range(20)]
    wait_until(lambda: _started(lows[0]), 60, "the first low-priority task to start")
    # Priority 9 lands on the sub-queue "default\x06\x169", priority 0 on "default" itself.
    assert clean_redis.client().llen("default\x06\x169") >= 10

    high = appliance.submit("demo.add", args=[1, 1], priority=HIGH)
    assert api.wait(high, 60) == 2
    high_started = _started(high)
    assert high_started is not None
    for task_id in lows:
        api.wait(task_id, 120)
    low_starts = [_started(t) for t in lows]
    assert all(low_starts)
    after = [s for s in low_starts if s and s > high_started]
    # Only the low task running when the high one arrived (and, at most, one the
    # worker had already taken) started before it; the rest waited behind it.
    assert len(after) >= 15, (high_started, low_starts)
