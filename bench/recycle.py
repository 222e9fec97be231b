"""Benchmark: what replacing pool children costs the worker (run by hand, not a test).

    .venv/bin/python bench/recycle.py [-n 2000] [--limits none,1000,100,10]
                                           [--repeat 1] [--stock]

For each max-tasks-per-child limit: N `demo.noop` tasks are enqueued first, then one
`appliance worker -c 2` (production profile: acks late, prefetch 1) drains them, on a
private redis-server (ephemeral port, no persistence) started here. Task records are off
(APPLIANCE_RECORDS_ENABLED=false): this measures the pool, not SQLite. Throughput is
(N - 1) / (last - first completion) from the results' date_done; the stall is the longest
gap between two consecutive completions. `--stock` runs every limit again on Celery's
own prefork pool, for a before/after. With --repeat, the rounds alternate and the
summary shows the median throughput and the worst stall.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.processes import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer, local_redis_server  # noqa: E402


@dataclass(frozen=True)
class Run:
    pool: str
    limit: str
    rate: float
    stall_ms: float


def _worker_env(server: RedisServer, limit: int, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env.update(
        APPLIANCE_BROKER_URL=server.broker_url,
        APPLIANCE_RESULT_BACKEND=server.backend_url,
        APPLIANCE_RECORDS_ENABLED="false",
        APPLIANCE_STATE_DIR=str(workdir / "state"),
        APPLIANCE_ENV_FILE=str(workdir / "empty.env"),
        APPLIANCE_MAX_TASKS_PER_CHILD=str(limit),
    )
    return env


def _enqueue(n: int) -> None:
    from appliance.celery_app import app

    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("demo.noop", queue="default", producer=producer)


def _completions(server: RedisServer) -> list[float]:
    client = server.client(server.db + 1)
    keys = list(client.scan_iter("celery-task-meta-*", count=1000))
    metas = [json.loads(raw) for raw in client.mget(keys) if raw]
    return sorted(datetime.fromisoformat(meta["date_done"]).timestamp() for meta in metas)


POOLS = ("consumers", "prefork", "stock")


def drain(server: RedisServer, n: int, limit: int, pool: str, workdir: Path) -> Run:
    """Enqueue n noops, start a worker, wait until all are done; throughput and stall."""
    server.flush()
    _enqueue(n)
    log = (workdir / f"worker-{pool}-{limit}.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "_worker.py"), f"--{pool}"],
        env=_worker_env(server, limit, workdir),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = server.client(server.db + 1)
    try:
        wait_until(lambda: results.dbsize() >= n, max(120.0, n / 5), f"{n} results", 0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            log.close()
    done = _completions(server)
    gaps = [later - earlier for earlier, later in itertools.pairwise(done)]
    return Run(
        pool,
        str(limit or "none"),
        (len(done) - 1) / (done[-1] - done[0]),
        max(gaps) * 1000,
    )


def report(runs: list[Run]) -> None:
    print("\n6. recycling: drain throughput by max-tasks-per-child (ratio to no limit)")
    print(f"{'pool':10} {'limit':>6} {'tasks/s':>9} {'ratio':>6} {'worst stall':>12}")
    for pool in dict.fromkeys(r.pool for r in runs):
        mine = [r for r in runs if r.pool == pool]
        rates = {
            limit: statistics.median(r.rate for r in mine if r.limit == limit)
            for limit in dict.fromkeys(r.limit for r in mine)
        }
        for limit, rate in rates.items():
            stall = max(r.stall_ms for r in mine if r.limit == limit)
            ratio = f"{rate / rates['none']:.2f}" if "none" in rates else "-"
            print(f"{pool:10} {limit:>6} {rate:9.1f} {ratio:>6} {stall:9.0f} ms")


def measure(n: int, limits: list[int], repeat: int, pools: list[str]) -> list[Run]:
    """Drains of n noops per limit (0 = none), alternating pools and limits."""
    with tempfile.TemporaryDirectory(prefix="bench-recycle-") as tmp:
        workdir = Path(tmp)
        (workdir / "empty.env").write_text("")
        with local_redis_server(workdir / "redis") as (server, _proc):
            saved = dict(os.environ)
            os.environ.update(_worker_env(server, 0, workdir))
            runs: list[Run] = []
            try:
                for _ in range(repeat):
                    for limit in limits:
                        for pool in pools:
                            started = time.monotonic()
                            run = drain(server, n, limit, pool, workdir)
                            runs.append(run)
                            print(
                                f"  {run.pool:10} limit {run.limit:>5}: {run.rate:7.1f} "
                                f"tasks/s, stall {run.stall_ms:5.0f} ms "
                                f"({time.monotonic() - started:.0f} s)",
                                flush=True,
                            )
            finally:
                os.environ.clear()
                os.environ.update(saved)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--tasks", type=int, default=2000, help="tasks per drain")
    parser.add_argument("--limits", default="none,1000,100,10", help="max-tasks-per-child")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all limits")
    parser.add_argument("--pools", default="consumers,prefork", help=f"some of {','.join(POOLS)}")
    parser.add_argument("--stock", action="store_true", help="also Celery's own pool")
    args = parser.parse_args()
    limits = [0 if x == "none" else int(x) for x in args.limits.split(",")]
    pools = [p for p in args.pools.split(",") if p] + (["stock"] if args.stock else [])
    report(measure(args.tasks, limits, args.repeat, pools))


if __name__ == "__main__":
    main()
