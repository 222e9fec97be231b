"""Fault matrix row 13 (docs/reliability.md): a bounded chaos soak.

A producer submits CHAOS_TASKS `probe.tally` tasks at a steady rate while, for the
whole time it runs, one fault at a time hits, every 4-10 s, drawn from rows 1, 4, 5, 7
and 8 in a random order that uses each kind once before any repeats:
worker SIGKILL then restart, worker SIGTERM then restart, Redis restart (AOF on), Redis
paused for a few seconds, and `CLIENT KILL TYPE normal`. Then everything must finish.

Invariant: every id the producer was told is accepted ends SUCCESS (lost = 0), after
`appliance tasks reconcile` has re-published what Redis lost (see below). Figures:
duplicates % (from the ledger on a second redis-server), worker restarts, faults by
kind, and the worst recovery (fault cleared -> the next task finished).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.records import store
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer, local_redis_server

CHAOS_TASKS = int(os.environ.get("APPLIANCE_TEST_CHAOS_TASKS", "10000"))
RATE = 100.0  # submits per second: the soak lasts about CHAOS_TASKS / RATE seconds
PAUSE_SECONDS = 4.0
LIMITS = {
    # Small enough that a killed worker's tasks come back within seconds, above the pause.
    "APPLIANCE_VISIBILITY_TIMEOUT": "12",
    "APPLIANCE_TASK_TIME_LIMIT": "10",
    "APPLIANCE_TASK_SOFT_TIME_LIMIT": "8",
    "APPLIANCE_TASK_MODULES": "tests.integration.probe_tasks",
}

_PRODUCER = """
import json, sys, time
import appliance
from appliance.errors import ApplianceError
from tests.integration import probe_tasks
count, rate = int(sys.argv[1]), float(sys.argv[2])
start = time.monotonic()
for i in range(count):
    delay = start + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    try:
        task_id = appliance.submit(probe_tasks.tally.name, args=[0])
    except ApplianceError as exc:
        print(json.dumps({"refused": str(exc)}), flush=True)
    else:
        print(json.dumps({"accepted": task_id}), flush=True)
"""


_SUCCEEDED = "select id from task_records where status = 'SUCCESS'"


def _successes(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute(
            "select count(*) from task_records where name = 'probe.tally' and status = 'SUCCESS'"
        ).fetchone()
    return int(row[0])


@pytest.mark.timeout(900)
def test_chaos_soak_loses_nothing_accepted(
    api_env: dict[str, str],
    tmp_path: Path,
    ledger: RedisServer,
    record_property: Callable[[str, object], None],
) -> None:
    rng = random.Random(int(time.time()))
    db = tmp_path / "records.db"
    with local_redis_server(tmp_path / "redis", "--appendonly", "yes") as (server, proc):
        env = dict(
            api_env,
            **LIMITS,
            APPLIANCE_BROKER_URL=server.broker_url,
            APPLIANCE_RESULT_BACKEND=server.backend_url,
            APPLIANCE_TEST_LEDGER_URL=ledger.url(0),
        )
        redis_args = list(proc.args)  # type: ignore[arg-type]
        redis_proc: subprocess.Popen[bytes] = proc
        restarts = 0
        worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker-0.log")
        producer_out = (tmp_path / "producer.jsonl").open("w")
        producer = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, str(CHAOS_TASKS), str(RATE)],
            env=env,
            stdout=producer_out,
            stderr=subprocess.STDOUT,
        )
        faults: Counter[str] = Counter()
        deck: list[str] = []
        recoveries: list[float] = []

        def restart_worker(how: signal.Signals) -> None:
            nonlocal worker, restarts
            if how == signal.SIGKILL:
                worker.proc.send_signal(signal.SIGKILL)
                worker.kill()  # as systemd does: nothing of its cgroup survives
            else:
                assert worker.terminate(timeout=60) == 0, "a graceful stop exits 0"
            restarts += 1
            worker = ApplianceProcess(
                ["worker", "-c", "2"], env, tmp_path / f"worker-{restarts}.log"
            )

        def restart_redis() -> None:
            nonlocal redis_proc
            redis_proc.terminate()  # SHUTDOWN: the AOF is written
            redis_proc.wait(30)
            redis_proc = subprocess.Popen(redis_args, start_new_session=True)

        def pause_redis() -> None:
            redis_proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(PAUSE_SECONDS)  # the fault itself lasts this long
            finally:
                redis_proc.send_signal(signal.SIGCONT)

        def client_kill() -> None:
            server.client().client_kill_filter(_type="normal", skipme=True)

        actions = {
            "worker SIGKILL + restart": lambda: restart_worker(signal.SIGKILL),
            "worker SIGTERM + restart": lambda: restart_worker(signal.SIGTERM),
            "redis restart (AOF)": restart_redis,
            "redis paused": pause_redis,
            "client kill": client_kill,
        }
        try:
            worker.wait_for_output(" ready.")
            while producer.poll() is None:
                wait_until(lambda: _successes(db) > 0 or producer.poll() is not None, 120, "work")
                deadline = time.monotonic() + rng.uniform(4, 10)
                while time.monotonic() < deadline and producer.poll() is None:
                    time.sleep(0.2)  # the load runs undisturbed between faults
                if producer.poll() is not None:
                    break
                if not deck:  # every kind once, in a random order, then again
                    deck = sorted(actions)
                    rng.shuffle(deck)
                kind = deck.pop()
                actions[kind]()
                faults[kind] += 1
                cleared = time.monotonic()
                before = _successes(db)
                wait_until(
                    lambda before=before: _successes(db) > before,  # type: ignore[misc]
                    120,
                    f"work again after {kind}",
                )
                recoveries.append(time.monotonic() - cleared)
            producer_out.close()
            lines = [json.loads(x) for x in (tmp_path / "producer.jsonl").read_text().splitlines()]
            accepted = [x["accepted"] for x in lines if "accepted" in x]
            refused = [x["refused"] for x in lines if "refused" in x]
            url = env["APPLIANCE_DATABASE_URL"]

            def all_done() -> bool:
                with sqlite3.connect(db, timeout=30) as conn:
                    done = {r[0] for r in conn.execute(_SUCCEEDED)}
                return done.issuperset(accepted)

            # The broker settles: nothing queued, nothing held unacked (a killed worker's
            # reserve comes back after the visibility timeout).
            client = server.client()
            wait_until(
                lambda: client.llen("default") + client.hlen("unacked") == 0,
                300,
                "the queue and the unacked set to empty",
            )
            # kombu pops with BRPOP and records the message as unacked in a second command:
            # a worker SIGKILLed between the two loses that message in Redis (only at idle
            # since ack-and-fetch). Its record stays PENDING, and the reconciler (beat runs
            # it every minute) re-publishes it.
            reconciled = run_cli(env, "tasks", "reconcile", "--min-age", "1", "--json")
            assert reconciled.returncode == 0, reconciled.stderr
            republished = len(json.loads(reconciled.stdout)["republished"])
            wait_until(all_done, 300, f"all {len(accepted)} accepted tasks SUCCESS")
        finally:
            producer.kill()
            producer.wait()
            producer_out.close()  # also when a wait above failed (no unraisable warning later)
            worker.terminate(timeout=60)
            redis_proc.send_signal(signal.SIGCONT)
            if redis_proc is not proc:
                redis_proc.terminate()
                redis_proc.wait(30)
    records = {r["id"]: r["status"] for r in store.list_records(url, limit=2 * CHAOS_TASKS)}
    lost = [i for i in accepted if records.get(i) != "SUCCESS"]
    assert lost == []
    counts = ledger.client().hgetall("appliance-test:tally")
    duplicates = sum(max(int(counts.get(i.encode(), 0)) - 1, 0) for i in accepted)
    assert all(int(counts.get(i.encode(), 0)) >= 1 for i in accepted)
    record_property("tasks", len(accepted))
    record_property("refused", len(refused))
    record_property("lost_in_redis_then_republished", republished)
    record_property("lost", 0)
    record_property("duplicates_pct", round(100 * duplicates / max(len(accepted), 1), 2))
    record_property("worker_restarts", restarts)
    record_property("faults", dict(faults))
    record_property("worst_recovery_seconds", round(max(recoveries, default=0.0), 1))
