"""Drain and enqueue measurements for bench/run.py: the appliance vs stock Celery vs Dramatiq.

Each contender gets the same private redis-server (ephemeral port, no persistence),
flushed before each run, and 2 worker processes:

- appliance          `appliance worker -c 2`: the production profile as install.sh deploys
                     it (acks late, records on in SQLite WAL, result backend, recycling at
                     1000 tasks; the default topology, consumers: 2 consumer processes
                     under a supervising parent)
- appliance-norec    the same with APPLIANCE_RECORDS_ENABLED=false
- appliance-events   the same with APPLIANCE_TASK_EVENTS=true (task events; nothing consumes
                     them: the workers' cost, not a monitor's)
- appliance-prefork(-norec, -events)  the same on the prefork topology (`--topology prefork`)
- celery-durable     stock Celery 5.7 with task_acks_late=True, prefetch multiplier 1
- celery-default     stock Celery 5.7 defaults
- dramatiq           Dramatiq defaults (`dramatiq -p 2`, 8 threads each)

Drain: N no-op tasks are enqueued first; then the worker starts. The clock runs from the
first message leaving the queue to the moment every message is acked (and, for the
appliance with records, every record is SUCCESS). Redis is polled every 2 ms.
Experiments (not in the default rows): celery-durable-p8 (prefetch multiplier 8),
celery-durable-threads (`-P threads -c 8`) and celery-durable-solo2 (two `-P solo`
workers: a consumer in every process, tasks run where they are fetched, no pool IPC),
for the topology questions; appliance-p4 (prefetch multiplier 4).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.processes import wait_until  # noqa: E402
from tests.helpers.redis_server import RedisServer  # noqa: E402

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Contender:
    name: str
    argv: list[str]
    env: dict[str, str]
    records: bool = False  # the drain ends when every record is SUCCESS too
    dramatiq: bool = False
    queue: str = "default"


def base_env(server: RedisServer, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "CELERY_"))}
    env.update(
        PYTHONPATH=str(REPO),
        BENCH_BROKER_URL=server.broker_url,
        APPLIANCE_BROKER_URL=server.broker_url,
        APPLIANCE_RESULT_BACKEND=server.backend_url,
        APPLIANCE_STATE_DIR=str(workdir / "state"),
        APPLIANCE_ENV_FILE=str(workdir / "empty.env"),
        APPLIANCE_DATABASE_URL=f"sqlite:///{workdir / 'records.db'}",
        APPLIANCE_LOG_LEVEL="warning",
    )
    return env


def contenders(server: RedisServer, workdir: Path) -> dict[str, Contender]:
    env = base_env(server, workdir)
    appliance = [str(VENV_BIN / "appliance"), "worker", "-c", "2", "--loglevel", "warning"]
    celery = [str(VENV_BIN / "celery"), "-A", "bench._stock_celery", "worker", "-c", "2"]
    celery += ["-l", "warning"]
    return {
        "appliance": Contender("appliance", appliance, env, records=True),
        "appliance-p4": Contender(
            "appliance-p4", appliance, dict(env, APPLIANCE_PREFETCH_MULTIPLIER="4"), records=True
        ),
        "appliance-norec": Contender(
            "appliance-norec", appliance, dict(env, APPLIANCE_RECORDS_ENABLED="false")
        ),
        "appliance-events": Contender(
            "appliance-events", appliance, dict(env, APPLIANCE_TASK_EVENTS="true"), records=True
        ),
        "celery-durable": Contender(
            "celery-durable", celery, dict(env, BENCH_DURABLE="1"), queue="celery"
        ),
        "celery-default": Contender("celery-default", celery, env, queue="celery"),
        "celery-durable-p8": Contender(
            "celery-durable-p8",
            celery,
            dict(env, BENCH_DURABLE="1", BENCH_PREFETCH="8"),
            queue="celery",
        ),
        "celery-durable-threads": Contender(
            "celery-durable-threads",
            [*celery, "-P", "threads", "-c", "8"],
            dict(env, BENCH_DURABLE="1"),
            queue="celery",
        ),
        "celery-durable-solo2": Contender(
            "celery-durable-solo2",
            ["sh", "-c", 'trap "kill 0" TERM; "$@" & "$@" & wait', "solo2", *celery, "-P", "solo"],
            dict(env, BENCH_DURABLE="1"),
            queue="celery",
        ),
        "appliance-prefork": Contender(
            "appliance-prefork", [*appliance, "--topology", "prefork"], env, records=True
        ),
        "appliance-prefork-norec": Contender(
            "appliance-prefork-norec",
            [*appliance, "--topology", "prefork"],
            dict(env, APPLIANCE_RECORDS_ENABLED="false"),
        ),
        "appliance-prefork-events": Contender(
            "appliance-prefork-events",
            [*appliance, "--topology", "prefork"],
            dict(env, APPLIANCE_TASK_EVENTS="true"),
            records=True,
        ),
        "dramatiq": Contender(
            "dramatiq",
            [str(VENV_BIN / "dramatiq"), "bench._dramatiq_app", "-p", "2"],
            env,
            dramatiq=True,
            queue="dramatiq:default",
        ),
    }


# -- enqueue -------------------------------------------------------------------------------


def _in_env(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith(("APPLIANCE_", "CELERY_", "BENCH_"))]:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith(("APPLIANCE_", "BENCH_"))})
    from appliance.config.settings import get_settings

    get_settings.cache_clear()


ENQUEUE_CODE = {
    "appliance": """
import appliance
for _ in range(n):
    appliance.submit("demo.noop")
""",
    "appliance-bulk": """
import appliance
appliance.submit_many("demo.noop", [{} for _ in range(n)])
""",
    "celery": """
from bench._stock_celery import noop
for _ in range(n):
    noop.delay()
""",
    "dramatiq": """
from bench._dramatiq_app import noop
for _ in range(n):
    noop.send()
""",
}


def enqueue(kind: str, n: int, env: dict[str, str]) -> float:
    """Enqueue n no-ops in a fresh process the way application code would; tasks/s."""
    code = (
        "import sys, time\nn = int(sys.argv[1])\n"
        + "t0 = time.perf_counter()\n"
        + ENQUEUE_CODE[kind]
        + "print(n / (time.perf_counter() - t0))\n"
    )
    # The imports happen before the clock starts: warm the modules with one task first.
    warm = ENQUEUE_CODE[kind].replace("range(n)", "range(1)")
    out = subprocess.run(
        [sys.executable, "-c", warm + code, str(n)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


# -- drain ---------------------------------------------------------------------------------


def _pending(client: object, contender: Contender) -> Callable[[], int]:
    if contender.dramatiq:
        return lambda: int(client.hlen("dramatiq:default.msgs"))  # type: ignore[attr-defined]

    def celery_pending() -> int:
        pipe = client.pipeline()  # type: ignore[attr-defined]
        pipe.llen(contender.queue)
        pipe.hlen("unacked")
        return sum(pipe.execute())

    return celery_pending


def _records_done(workdir: Path) -> int:
    with sqlite3.connect(workdir / "records.db", timeout=30) as db:
        return int(
            db.execute("select count(*) from task_records where status='SUCCESS'").fetchone()[0]
        )


@dataclass(frozen=True)
class DrainRun:
    rate: float  # tasks/s
    bytes_per_task: float  # Redis used_memory growth per queued task
    enqueue_commands: float  # Redis commands per task while enqueueing
    drain_commands: float  # Redis commands per task while draining (bench polls excluded)
    cpu_ms: float  # CPU of the worker's process tree per task while draining
    redis_cpu_ms: float  # CPU of redis-server per task while draining


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of *pid*, its reaped children and its live descendants (from /proc)."""
    total = 0.0
    pending = [pid]
    first = True
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # utime, stime (and, for the root, cutime + cstime of the children it reaped)
        ticks = int(fields[11]) + int(fields[12])
        if first:
            ticks += int(fields[13]) + int(fields[14])
            first = False
        total += ticks / _TICK
        pending += [int(c) for c in children]
    return total


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _commands(client: Any) -> int:
    """Commands Redis has run since its stats were reset, minus the bench's own polling."""
    stats = client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_llen", "cmdstat_hlen")
    )


def _fresh_records(contender: Contender, workdir: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (workdir / f"records.db{suffix}").unlink(missing_ok=True)
    if contender.name.startswith("appliance"):
        subprocess.run(
            [str(VENV_BIN / "appliance"), "db", "upgrade"],
            env=contender.env,
            check=True,
            capture_output=True,
        )


def drain(server: RedisServer, contender: Contender, n: int, workdir: Path) -> DrainRun:
    """Enqueue n no-ops, start the worker, time the drain."""
    server.flush()
    _fresh_records(contender, workdir)
    client = server.client()
    client.config_resetstat()
    memory_before = int(client.info("memory")["used_memory"])
    if contender.name.startswith("appliance"):
        enqueue("appliance-bulk", n, contender.env)
    elif contender.dramatiq:
        enqueue("dramatiq", n, contender.env)
    else:
        enqueue("celery", n, contender.env)
    qname = contender.queue
    n = int(client.llen(qname))  # n + the warm-up task
    queued_bytes = (int(client.info("memory")["used_memory"]) - memory_before) / n
    enqueue_commands = _commands(client)
    pending = _pending(client, contender)
    log = (workdir / f"{contender.name}.log").open("ab")
    worker = subprocess.Popen(
        contender.argv,
        env=contender.env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while client.llen(qname) >= n:
            if worker.poll() is not None:
                raise RuntimeError(f"{contender.name} exited {worker.returncode}; see its log")
            time.sleep(0.002)
        started = time.perf_counter()
        cpu_before, redis_before = tree_cpu(worker.pid), _redis_cpu(client)
        deadline = started + max(300.0, n / 20)
        while pending() > 0:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{contender.name}: drain did not finish")
            time.sleep(0.002)
        if contender.records:
            wait_until(lambda: _records_done(workdir) >= n, 300, "records SUCCESS", 0.002)
        rate = n / (time.perf_counter() - started)
        cpu_ms = (tree_cpu(worker.pid) - cpu_before) * 1000 / n
        redis_cpu_ms = (_redis_cpu(client) - redis_before) * 1000 / n
    finally:
        stop(worker)
        log.close()
    return DrainRun(
        rate,
        queued_bytes,
        enqueue_commands / n,
        (_commands(client) - enqueue_commands) / n,
        cpu_ms,
        redis_cpu_ms,
    )


def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to the whole process group after 60 s."""
    worker.send_signal(signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        worker.wait(60)
    with suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
