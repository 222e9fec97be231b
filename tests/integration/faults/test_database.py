"""Fault matrix row 11 (docs/reliability.md): the task-record database goes away mid-load and
comes back.

Real redis-server processes, real workers, a real SQLite file (locked by a second
connection holding `BEGIN EXCLUSIVE` past the write lock timeout) and a real PostgreSQL
cluster private to the test (stopped with `pg_ctl stop -m fast`, then started again).

The ledger is kept outside the database under test: the result backend (every task's
result) and the probe task's execution tally on a SECOND redis-server
(APPLIANCE_TEST_LEDGER_URL). Invariants: every accepted task ran and stored its result
(lost = 0); the worker stays up; every record is in a coherent state (no SUCCESS without
finished_at and result, no STARTED without started_at); once the database is back, new
tasks get complete records again. Both topologies: on prefork the gap is reported (the
worker heartbeat's record-write error count and `appliance health --json`'s
record_writes check) and records whose final write failed even after its retries stay at
their last written state (a counted gap); on consumers the final writes wait in the
unit's journal, health reports them (record_journal), and every record catches up.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.core.constants import DB_LOCK_TIMEOUT_SECONDS
from appliance.health.checks import read_heartbeats
from appliance.health.resp import Resp
from appliance.records import store
from appliance.records.db import dispose_all
from tests.helpers.load import publish_batch
from tests.helpers.private_postgres import PrivateCluster, private_postgres
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer

LOAD = 200
AFTER = 20  # tasks published once the database is back
TALLY_KEY = "appliance-test:tally"


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    with private_postgres() as running:
        yield running
    dispose_all()  # this process's pooled connections to the cluster that is gone


@pytest.fixture(params=("consumers", "prefork"))
def topology(request: pytest.FixtureRequest) -> str:
    """Prefork pool children write final records themselves (a failed one is a counted
    gap); consumers carry them in the ack to their unit's journal, which waits for the
    database (appliance/records/journal.py) and leaves no gap."""
    return str(request.param)


def _env(
    base: dict[str, str], broker: RedisServer, ledger: RedisServer, topology: str
) -> dict[str, str]:
    return dict(
        base,
        APPLIANCE_WORKER_TOPOLOGY=topology,
        APPLIANCE_TASK_MODULES="tests.integration.probe_tasks",
        APPLIANCE_BROKER_URL=broker.broker_url,
        APPLIANCE_RESULT_BACKEND=broker.backend_url,
        APPLIANCE_TEST_LEDGER_URL=ledger.url(0),
        APPLIANCE_HEALTH_EXPECT_BEAT="false",
    )


def _results(broker: RedisServer, ids: list[str]) -> dict[str, str]:
    """Each id's state in the result backend (MISSING when nothing is stored)."""
    raw = broker.client(broker.db + 1).mget([f"celery-task-meta-{i}" for i in ids])
    return {i: json.loads(r)["status"] if r else "MISSING" for i, r in zip(ids, raw, strict=True)}


def _all_results_in(broker: RedisServer, ids: list[str]) -> Callable[[], bool]:
    return lambda: set(_results(broker, ids).values()) == {"SUCCESS"}


def _runs(ledger: RedisServer, ids: list[str]) -> dict[str, int]:
    raw = ledger.client().hgetall(TALLY_KEY)
    counts = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    return {task_id: counts.get(task_id, 0) for task_id in ids}


def _records(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    found = {r["id"]: r for r in store.list_records(url, limit=10 * len(ids) + 100)}
    return {task_id: found[task_id] for task_id in ids if task_id in found}


def _complete(record: dict[str, Any] | None) -> bool:
    """A record the worker wrote in full: STARTED then SUCCESS, with its result."""
    return bool(
        record
        and record["status"] == "SUCCESS"
        and record["started_at"]
        and record["finished_at"]
        and record["worker"]
        and record["result"] == 1
    )


def _incoherent(records: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Records whose fields contradict their status (a half-written record)."""
    bad = []
    for task_id, r in records.items():
        status = r["status"]
        if status == "PENDING":
            ok = r["started_at"] is None and r["finished_at"] is None and r["result"] is None
        elif status == "STARTED":
            ok = r["started_at"] is not None and r["finished_at"] is None and r["result"] is None
        elif status == "SUCCESS":
            ok = (
                r["finished_at"] is not None
                and r["result"] == 1
                and r["progress"] == 100
                and r["error"] is None
            )
        else:
            ok = False  # nothing here fails, retries or is revoked
        if not ok or r["name"] != "probe.tally":
            bad.append((task_id, status))
    return bad


def _heartbeats(server: RedisServer) -> list[dict[str, Any]]:
    with Resp(server.url()) as conn:
        return read_heartbeats(conn)


def _heartbeat_errors(broker: RedisServer) -> int:
    return sum(int(b.get("record_write_errors", 0)) for b in _heartbeats(broker))


def _health_check(env: dict[str, str], name: str) -> dict[str, Any] | None:
    result = run_cli(env, "health", "--json", timeout=60)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    return checks.get(name)


def _gap_reported(env: dict[str, str], broker: RedisServer) -> dict[str, Any]:
    """Wait until health says records are missing (prefork: the heartbeat counts failed
    writes) or waiting in the journal (consumers)."""
    if env["APPLIANCE_WORKER_TOPOLOGY"] == "consumers":
        check = wait_until(
            lambda: _health_check(env, "record_journal"), 90, "health's record_journal check"
        )
        assert check["status"] == "WARNING", check
        assert check["value"] >= 1 and "fix:" in check["message"], check
        return check
    wait_until(lambda: _heartbeat_errors(broker) > 0, 90, "record-write errors in a heartbeat")
    check = wait_until(lambda: _health_check(env, "record_writes"), 60, "health's record_writes")
    assert check["status"] in ("WARNING", "CRITICAL"), check
    assert check["value"] >= 1 and "fix:" in check["message"], check
    return check


def _first_record_written_after(url: str, ids: list[str], back: datetime) -> bool:
    def after(stamp: str | None) -> bool:
        return bool(stamp) and datetime.fromisoformat(str(stamp)) >= back

    return any(
        r["status"] == "SUCCESS" and after(r["finished_at"]) for r in _records(url, ids).values()
    )


def _settle_and_check(
    env: dict[str, str],
    broker: RedisServer,
    ledger: RedisServer,
    worker: ApplianceProcess,
    load: list[str],
    after: list[str],
    back: datetime,
    back_at: float,
    record_property: Callable[[str, object], None],
) -> None:
    """After the database is back: lost 0, coherent records, complete new records, figures."""
    url = env["APPLIANCE_DATABASE_URL"]
    wait_until(
        lambda: _first_record_written_after(url, load + after, back),
        120,
        "a record written after the database came back",
    )
    recovered = round(time.monotonic() - back_at, 1)
    wait_until(_all_results_in(broker, load + after), 300, "every result in the result backend")
    wait_until(
        lambda: (
            all(_complete(r) for r in _records(url, after).values())
            and len(_records(url, after)) == AFTER
        ),
        120,
        f"complete records for the {AFTER} tasks published after the outage",
    )
    assert worker.proc.poll() is None, "the worker died:\n" + worker.output()[-3000:]

    runs = _runs(ledger, load + after)
    never_ran = [t for t, n in runs.items() if n == 0]
    assert never_ran == [], f"{len(never_ran)} accepted tasks never ran"  # lost = 0
    if env["APPLIANCE_WORKER_TOPOLOGY"] == "consumers":
        # The journal waited for the database: every record catches up, no gap.
        wait_until(
            lambda: all(r["status"] == "SUCCESS" for r in _records(url, load).values()),
            120,
            "every record of the load SUCCESS once the journal is written",
        )
        assert _health_check(env, "record_journal") is None
    records = _records(url, load + after)
    assert _incoherent(records) == []
    gaps = [t for t in load if t not in records or records[t]["status"] != "SUCCESS"]
    errors = _heartbeat_errors(broker)
    if env["APPLIANCE_WORKER_TOPOLOGY"] == "consumers":
        assert gaps == []
    else:
        assert errors >= 1
    log = worker.output()
    assert "Traceback" not in log and "Unrecoverable error" not in log, log[-3000:]
    record_property("tasks", LOAD + AFTER)
    record_property("lost", 0)
    record_property("duplicates", sum(n - 1 for n in runs.values()))
    record_property("record_write_errors", errors)
    record_property("records_left_behind", len(gaps))
    record_property("final_writes_saved_by_retry", log.count("task record written after"))
    record_property("recovery_seconds", recovered)


# SQLite: the records file stays locked past the write lock timeout --------------------------


@pytest.mark.timeout(900)
def test_sqlite_locked_mid_load_tasks_run_the_gap_is_reported_and_records_resume(
    api_env: dict[str, str],
    clean_redis: RedisServer,
    ledger: RedisServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    topology: str,
) -> None:
    env = _env(api_env, clean_redis, ledger, topology)
    url = env["APPLIANCE_DATABASE_URL"]
    database = url.removeprefix("sqlite:///")
    worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker.log")
    lock: sqlite3.Connection | None = None
    try:
        worker.wait_for_output(" ready.")
        load = publish_batch(env, LOAD, seconds=0.05)  # PENDING records written first
        wait_until(
            lambda: (
                sum(r["status"] == "SUCCESS" for r in _records(url, load).values()) >= LOAD // 4
            ),
            120,
            "a quarter of the load recorded SUCCESS",
        )

        # Another process takes the write lock and keeps it: every record write waits
        # DB_LOCK_TIMEOUT_SECONDS, then fails (WAL: readers still read).
        lock = sqlite3.connect(database, timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        check = _gap_reported(env, clean_redis)
        assert time.monotonic() - locked_at > DB_LOCK_TIMEOUT_SECONDS
        assert worker.proc.poll() is None
        # Mid-load still: tasks are left to run once the lock goes.
        assert set(_results(clean_redis, load).values()) != {"SUCCESS"}

        lock.rollback()
        lock.close()
        lock = None
        back, back_at = datetime.now(UTC), time.monotonic()
        record_property("locked_seconds", round(back_at - locked_at, 1))
        record_property("health_record_writes", check["status"])
        after = publish_batch(env, AFTER, seconds=0.05)
        _settle_and_check(
            env, clean_redis, ledger, worker, load, after, back, back_at, record_property
        )
    finally:
        if lock is not None:
            lock.close()
        worker.terminate()


# PostgreSQL: the server stops mid-load and starts again -------------------------------------


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_postgres_stopped_mid_load_tasks_run_the_gap_is_reported_and_the_worker_reconnects(
    api_env: dict[str, str],
    clean_redis: RedisServer,
    ledger: RedisServer,
    cluster: PrivateCluster,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    topology: str,
) -> None:
    url = cluster.create_database("appliance")
    env = dict(_env(api_env, clean_redis, ledger, topology), APPLIANCE_DATABASE_URL=url)
    upgraded = run_cli(env, "db", "upgrade", timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker.log")
    try:
        worker.wait_for_output(" ready.")
        load = publish_batch(env, LOAD, seconds=0.1)
        wait_until(
            lambda: (
                sum(r["status"] == "SUCCESS" for r in _records(url, load).values()) >= LOAD // 4
            ),
            120,
            "a quarter of the load recorded SUCCESS",
        )

        cluster.stop("fast")  # disconnects every session, refuses new ones
        dispose_all()  # the test's own pooled connections went with it
        stopped_at = time.monotonic()
        check = _gap_reported(env, clean_redis)
        assert worker.proc.poll() is None
        # The tasks go on while the database is down.
        wait_until(
            lambda: list(_results(clean_redis, load).values()).count("SUCCESS") > LOAD // 2,
            120,
            "tasks finishing while PostgreSQL is down",
        )

        cluster.start()
        back, back_at = datetime.now(UTC), time.monotonic()
        record_property("down_seconds", round(back_at - stopped_at, 1))
        record_property("health_record_writes", check["status"])
        after = publish_batch(env, AFTER, seconds=0.1)
        _settle_and_check(
            env, clean_redis, ledger, worker, load, after, back, back_at, record_property
        )
    finally:
        worker.terminate()
