"""Dramatiq with its defaults for the benchmarks (a benchmark-only dependency).

dramatiq bench._dramatiq_app -p 2        (BENCH_BROKER_URL)
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="default")
def noop() -> None:
    return None
