"""The performance harness: every row of docs/performance.md from one command.

    make bench                      (= .venv/bin/python bench/run.py)
    .venv/bin/python bench/run.py [-n 10000] [--repeat 3] [--rows 1,2,3,4,5,6,7,8]

Needs the bench extra (`pip install -e '.[bench]'`: Dramatiq). Starts its own
redis-server (ephemeral port, no persistence) and workers; never part of the tests.
Contenders run in the same run, alternating, `--repeat` times; medians are printed with
the ratio to the reference. Rows:

1. drain of N pre-enqueued no-ops, 2 worker processes: the appliance's production
   profile (the default topology, consumers; and prefork) vs stock Celery durable
   (reference) vs Dramatiq defaults
2. enqueue rate: appliance.submit / appliance.submit_many vs Celery delay vs Dramatiq send
3. task records on vs off (the same production profile otherwise)
4. enqueue-to-start latency p50/p99 at about 50 % of the measured capacity
5. `appliance health` vs `celery inspect ping`: wall time and peak RSS
6. recycling: max-tasks-per-child none / 1000 / 100 / 10
7. Redis bytes per queued task and Redis commands per task (INFO commandstats)
8. task events on (APPLIANCE_TASK_EVENTS=true) vs off (worker events only, the default)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import drain as D  # noqa: E402
from bench import health as H  # noqa: E402
from bench import recycle as R  # noqa: E402
from tests.helpers.processes import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer, local_redis_server  # noqa: E402

DRAIN = ("appliance", "appliance-prefork", "celery-durable", "dramatiq", "celery-default")
RECORDS = (("appliance", "appliance-norec"), ("appliance-prefork", "appliance-prefork-norec"))
EVENTS = (("appliance-events", "appliance"), ("appliance-prefork-events", "appliance-prefork"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows) + 2
    for name, value, ratio, note in rows:
        print(f"  {name:<{width}}{value:>14}  {ratio:>9}  {note}")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b else "-"


def runs_text(values: list[float]) -> str:
    return "runs " + " ".join(f"{v:.0f}" for v in values)


# -- rows 1, 3, 7: drains -----------------------------------------------------------------


def drains(
    server: RedisServer, workdir: Path, names: list[str], n: int, repeat: int
) -> dict[str, list[D.DrainRun]]:
    table_ = D.contenders(server, workdir)
    runs: dict[str, list[D.DrainRun]] = {name: [] for name in names}
    for round_ in range(repeat):
        for name in names:
            run = D.drain(server, table_[name], n, workdir)
            runs[name].append(run)
            print(f"  [drain {round_ + 1}/{repeat}] {name:18} {run.rate:8.0f} tasks/s", flush=True)
    return runs


def print_drain(runs: dict[str, list[D.DrainRun]], n: int) -> None:
    rates = {name: [r.rate for r in rs] for name, rs in runs.items()}
    ref = median(rates["celery-durable"])
    dramatiq = median(rates["dramatiq"])
    rows = [
        (
            name,
            f"{median(values):.0f} tasks/s",
            ratio(median(values), ref),
            f"vs Dramatiq {ratio(median(values), dramatiq)}; CPU per task: workers "
            f"{median([r.cpu_ms for r in runs[name]]):.2f} ms, redis "
            f"{median([r.redis_cpu_ms for r in runs[name]]):.3f} ms; {runs_text(values)}",
        )
        for name, values in rates.items()
    ]
    table(f"1. drain of {n} no-ops, 2 processes (ratio to celery-durable; goal >= 2x)", rows)


def print_on_off(
    title: str, pairs: tuple[tuple[str, str], ...], runs: dict[str, list[D.DrainRun]]
) -> None:
    """A row of on/off pairs of drain contenders: each on's median rate over its off's, and
    the worker CPU per task of each (steadier than the rate on a noisy machine)."""

    def note(name: str) -> str:
        cpu = median([r.cpu_ms for r in runs[name]])
        return f"worker CPU {cpu:.2f} ms/task; {runs_text([r.rate for r in runs[name]])}"

    rows = []
    for on_name, off_name in pairs:
        on = median([r.rate for r in runs[on_name]])
        off = median([r.rate for r in runs[off_name]])
        rows += [
            (on_name, f"{on:.0f} tasks/s", ratio(on, off), note(on_name)),
            (off_name, f"{off:.0f} tasks/s", "1.00x", note(off_name)),
        ]
    table(title, rows)


def print_records(runs: dict[str, list[D.DrainRun]]) -> None:
    print_on_off("3. task records on vs off, same profile (goal: on/off >= 0.9)", RECORDS, runs)


def print_events(runs: dict[str, list[D.DrainRun]]) -> None:
    print_on_off(
        "8. task events on vs off (worker events only), same profile, no event consumer",
        EVENTS,
        runs,
    )


def print_redis_costs(runs: dict[str, list[D.DrainRun]]) -> None:
    rows = []
    for name, rs in runs.items():
        bytes_ = median([r.bytes_per_task for r in rs])
        enq = median([r.enqueue_commands for r in rs])
        drn = median([r.drain_commands for r in rs])
        rows.append(
            (
                name,
                f"{bytes_:.0f} B/task",
                f"{enq + drn:.1f} cmd",
                f"enqueue {enq:.1f} + drain {drn:.1f} commands per task",
            )
        )
    table("7. Redis bytes per queued task and commands per task (INFO commandstats)", rows)


# -- row 2: enqueue -----------------------------------------------------------------------


def enqueues(server: RedisServer, workdir: Path, n: int, repeat: int) -> dict[str, list[float]]:
    env = D.base_env(server, workdir)
    kinds = {
        "appliance.submit": "appliance",
        "appliance.submit_many": "appliance-bulk",
        "celery delay": "celery",
        "dramatiq send": "dramatiq",
    }
    rates: dict[str, list[float]] = {name: [] for name in kinds}
    appliance = D.contenders(server, workdir)["appliance"]
    for round_ in range(repeat):
        for name, kind in kinds.items():
            server.flush()
            D._fresh_records(appliance, workdir)
            # One-by-one submits are slow with records on: a tenth of N is plenty.
            count = n // 10 if kind == "appliance" else n
            rate = D.enqueue(kind, count, env)
            rates[name].append(rate)
            print(f"  [enqueue {round_ + 1}/{repeat}] {name:22} {rate:8.0f} tasks/s", flush=True)
    return rates


def print_enqueue(rates: dict[str, list[float]]) -> None:
    ref = median(rates["dramatiq send"])
    rows = [
        (name, f"{median(v):.0f} tasks/s", ratio(median(v), ref), runs_text(v))
        for name, v in rates.items()
    ]
    table("2. enqueue rate, one producer process (ratio to Dramatiq send; goal: bulk >= 1x)", rows)


# -- row 4: latency -----------------------------------------------------------------------

PACED_PRODUCER = """
import sys, time
import appliance
rate, count = float(sys.argv[1]), int(sys.argv[2])
appliance.submit("demo.noop")
t0, cpu0 = time.perf_counter(), time.process_time()
for i in range(count):
    delay = t0 + i / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    appliance.submit("demo.noop")
print(time.process_time() - cpu0)
"""


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    rate: float
    # CPU ms per task while the producer ran (the worker's and Redis's until every record
    # was SUCCESS), and how busy that kept the machine's cores.
    producer_cpu_ms: float
    worker_cpu_ms: float
    redis_cpu_ms: float
    cores_busy: float


def latency(server: RedisServer, workdir: Path, rate: float, count: int) -> Latency:
    """p50/p99 of (record started_at - created_at) for tasks submitted at *rate*/s; ms."""
    import sqlite3

    contender = D.contenders(server, workdir)["appliance"]
    server.flush()
    D._fresh_records(contender, workdir)
    log = (workdir / "latency.log").open("ab")
    worker = subprocess.Popen(
        contender.argv,
        env=contender.env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = server.client()
        wait_until(lambda: bool(client.keys("appliance:worker:*")), 60, "the worker's heartbeat")
        worker_before, redis_before = D.tree_cpu(worker.pid), D._redis_cpu(client)
        started = time.perf_counter()
        producer = subprocess.run(
            [sys.executable, "-c", PACED_PRODUCER, str(rate), str(count)],
            env=contender.env,
            cwd=REPO,
            check=True,
            timeout=600,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        producer_cpu = float(producer.stdout.split()[-1])  # the paced loop's own CPU
        wait_until(lambda: D._records_done(workdir) >= count + 1, 300, "all SUCCESS", 0.05)
        worker_cpu = D.tree_cpu(worker.pid) - worker_before
        redis_cpu = D._redis_cpu(client) - redis_before
    finally:
        D.stop(worker)
        log.close()
    with sqlite3.connect(workdir / "records.db") as db:
        pairs = db.execute("select created_at, started_at from task_records").fetchall()
    waits = sorted(
        (datetime.fromisoformat(s) - datetime.fromisoformat(c)).total_seconds() * 1000
        for c, s in pairs
        if c and s
    )[1:]  # the first one warms up
    q = statistics.quantiles(waits, n=100)
    per_task = 1000 / count
    return Latency(
        q[49],
        q[98],
        rate,
        producer_cpu * per_task,
        worker_cpu * per_task,
        redis_cpu * per_task,
        (producer_cpu + worker_cpu + redis_cpu) / wall / (os.cpu_count() or 1),
    )


def print_latency(result: Latency, capacity: float) -> None:
    r = result
    rows = [
        (
            "p50",
            f"{r.p50_ms:.1f} ms",
            "",
            f"at {r.rate:.0f} tasks/s = 50 % of the drain rate {capacity:.0f}/s",
        ),
        ("p99", f"{r.p99_ms:.1f} ms", f"{r.p99_ms / 5:.2f}x", "ratio to the goal p99 <= 5 ms"),
        (
            "CPU",
            f"{r.cores_busy * 100:.0f} % busy",
            "",
            f"of {os.cpu_count()} cores; per task: producer (appliance.submit) "
            f"{r.producer_cpu_ms:.2f} ms, worker {r.worker_cpu_ms:.2f} ms, "
            f"redis {r.redis_cpu_ms:.2f} ms",
        ),
    ]
    table("4. enqueue-to-start latency (record created_at -> started_at), production profile", rows)


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--tasks", type=int, default=10_000, help="tasks per drain/enqueue")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per contender")
    parser.add_argument("--rows", default="1,2,3,4,5,6,7,8")
    parser.add_argument(
        "--drain-only", default="", help="comma list: run just these drain contenders"
    )
    args = parser.parse_args()
    if args.drain_only:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            (Path(tmp) / "empty.env").write_text("")
            with local_redis_server(Path(tmp) / "redis") as (server, _proc):
                runs = drains(
                    server, Path(tmp), args.drain_only.split(","), args.tasks, args.repeat
                )
        ref = median([r.rate for r in runs.get("celery-durable", [])])
        for name, rs in runs.items():
            rates = [r.rate for r in rs]
            cpu = median([r.cpu_ms for r in rs])
            rcpu = median([r.redis_cpu_ms for r in rs])
            print(
                f"{name:24} {median(rates):8.0f} tasks/s  {ratio(median(rates), ref):>6} "
                f"stock durable  CPU/task: worker {cpu:.2f} ms, redis {rcpu:.3f} ms  "
                f"{runs_text(rates)}"
            )
        return
    rows = {int(r) for r in args.rows.split(",")}
    started = time.monotonic()
    printers = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "empty.env").write_text("")
        with local_redis_server(workdir / "redis") as (server, _proc):
            names = []
            if rows & {1, 7}:
                names += list(DRAIN)
            if rows & {3, 7}:
                names += [name for pair in RECORDS for name in pair]
            if 8 in rows:
                names += [name for pair in EVENTS for name in pair]
            names = list(dict.fromkeys(names))
            runs = drains(server, workdir, names, args.tasks, args.repeat) if names else {}
            if 1 in rows:
                printers.append(lambda: print_drain({k: runs[k] for k in DRAIN}, args.tasks))
            if 2 in rows:
                rates = enqueues(server, workdir, args.tasks, args.repeat)
                printers.append(lambda: print_enqueue(rates))
            if 3 in rows:
                printers.append(lambda: print_records(runs))
            if 8 in rows:
                printers.append(lambda: print_events(runs))
            if 4 in rows:
                capacity = (
                    median([r.rate for r in runs["appliance"]]) if runs.get("appliance") else 1000.0
                )
                lat = latency(server, workdir, capacity / 2, min(args.tasks, int(capacity * 10)))
                printers.append(lambda: print_latency(lat, capacity))
            if 7 in rows:
                printers.append(lambda: print_redis_costs(runs))
    if 5 in rows:
        health = H.measure(rounds=5)
        printers.append(lambda: H.report(health))
    if 6 in rows:
        recycle = R.measure(
            n=2000, limits=[0, 1000, 100, 10], repeat=1, pools=["prefork", "consumers"]
        )
        printers.append(lambda: R.report(recycle))
    print(f"\n=== results ({time.monotonic() - started:.0f} s, {args.repeat} rounds each)")
    for printer in printers:
        printer()


if __name__ == "__main__":
    main()
