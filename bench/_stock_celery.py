"""Stock Celery for the benchmarks: defaults, plus the two durable settings when asked.

celery -A bench._stock_celery worker -c 2      (BENCH_BROKER_URL, BENCH_DURABLE=1)
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("stock", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
if os.environ.get("BENCH_DURABLE") == "1":
    # "Stock Celery durable": the settings Celery's docs give for not losing tasks.
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)
if os.environ.get("BENCH_PREFETCH"):  # experiments only
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_PREFETCH"])


@app.task(name="bench.noop")
def noop() -> None:
    return None
