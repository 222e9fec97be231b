"""Fault injection, fault matrix row 12 (docs/reliability.md): Redis Sentinel failover under
load.

A real Sentinel group (a master, one replica, three sentinels on loopback ports), a real
worker on sentinel:// URLs, real SQLite records. The probe task's execution tally lives
on a SECOND redis-server outside the Sentinel group (APPLIANCE_TEST_LEDGER_URL), so the
failover cannot touch it. The master is SIGKILLed mid-load; the sentinels promote the
replica and the same worker process carries on against it.

Replication is asynchronous: whatever the master acknowledged but had not yet sent to
the replica is gone. That is reported as a figure (lost_to_replication), not hidden; the
invariant is that the reconciler (`appliance tasks reconcile`) brings every such task
back from its PENDING record: lost = 0 after reconcile.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers.ledger import statuses as _statuses
from tests.helpers.load import publish_batch
from tests.helpers.processes import ApplianceProcess, run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.helpers.sentinel import SentinelGroup, sentinel_group

LOAD = 200
TALLY_KEY = "appliance-test:tally"
SETTLED_QUIET_SECONDS = 5.0

# Submits LOAD probe.tally tasks at a steady pace through the Python API, across the
# failover. A refused submit (the application saw an error) is not an accepted task; the
# producer submits again, as an application would. One line per outcome, flushed.
_PRODUCER = """
import sys, time
import appliance
from appliance.errors import ApplianceError
from tests.integration import probe_tasks
count, pause, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
accepted = 0
with open(out, "a", buffering=1) as log:
    while accepted < count:
        try:
            task_id = appliance.submit(probe_tasks.tally.name, args=[0.02])
        except ApplianceError as exc:
            log.write(f"refused {exc}\\n")
        else:
            accepted += 1
            log.write(f"accepted {task_id}\\n")
        time.sleep(pause)
"""


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path / "sentinel") as started:
        yield started


def _env(base: dict[str, str], group: SentinelGroup, ledger: RedisServer) -> dict[str, str]:
    return dict(
        base,
        APPLIANCE_TASK_MODULES="tests.integration.probe_tasks",
        APPLIANCE_BROKER_URL=group.url(0),
        APPLIANCE_RESULT_BACKEND=group.url(1),
        APPLIANCE_REDIS_SENTINEL_MASTER=group.name,
        APPLIANCE_TEST_LEDGER_URL=ledger.url(0),
        # Small limits so that messages a lost ack left in unacked come back within seconds.
        APPLIANCE_VISIBILITY_TIMEOUT="10",
        APPLIANCE_TASK_TIME_LIMIT="5",
        APPLIANCE_TASK_SOFT_TIME_LIMIT="4",
        APPLIANCE_RECONCILE_MIN_AGE="1",
    )


def _outcomes(path: Path) -> tuple[list[str], list[str]]:
    """(accepted ids, refusal messages) the producer has written so far."""
    accepted, refused = [], []
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        (accepted if kind == "accepted" else refused).append(rest)
    return accepted, refused


def _runs(ledger: RedisServer, ids: list[str]) -> dict[str, int]:
    raw = ledger.client().hgetall(TALLY_KEY)
    counts = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    return {task_id: counts.get(task_id, 0) for task_id in ids}


def _health(env: dict[str, str]) -> dict[str, dict[str, object]]:
    result = run_cli(env, "health", "--json", timeout=60)
    assert result.returncode in (0, 1, 2), result.stdout + result.stderr  # 3: the probe broke
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def _settled(url: str, ids: list[str], master: redis.Redis) -> Callable[[], bool]:
    """All SUCCESS, or nothing left to happen: the queue and unacked are empty on the new
    master and no record changed for a few seconds (what is still PENDING then is lost)."""
    last: dict[str, object] = {"snapshot": None, "since": time.monotonic()}

    def check() -> bool:
        statuses = _statuses(url, ids)
        if all(s == "SUCCESS" for s in statuses.values()):
            return True
        try:
            idle = master.llen("default") == 0 and master.hlen("unacked") == 0
        except redis.RedisError:
            idle = False
        if statuses != last["snapshot"] or not idle:
            last["snapshot"], last["since"] = statuses, time.monotonic()
            return False
        return time.monotonic() - float(last["since"]) >= SETTLED_QUIET_SECONDS  # type: ignore[arg-type]

    return check


@pytest.mark.timeout(900)
def test_sentinel_failover_mid_load_the_worker_follows_and_reconcile_recovers_the_rest(
    api_env: dict[str, str],
    tmp_path: Path,
    group: SentinelGroup,
    ledger: RedisServer,
    record_property: Callable[[str, object], None],
) -> None:
    env = _env(api_env, group, ledger)
    url = env["APPLIANCE_DATABASE_URL"]
    before = _health(env)["sentinel"]
    assert before["status"] == "OK" and f"127.0.0.1:{group.master_port}" in str(
        before["message"]
    ), before

    worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker.log")
    outcomes = tmp_path / "producer.out"
    producer: subprocess.Popen[bytes] | None = None
    try:
        worker.wait_for_output(" ready.")
        with (tmp_path / "producer.err").open("wb") as errors:
            producer = subprocess.Popen(
                [sys.executable, "-c", _PRODUCER, str(LOAD), "0.03", str(outcomes)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

        def mid_load() -> bool:
            accepted, _ = _outcomes(outcomes)
            done = list(_statuses(url, accepted).values()).count("SUCCESS")
            return len(accepted) >= LOAD // 3 and done >= LOAD // 6

        wait_until(mid_load, 120, "the load to be under way")
        group.kill_master()
        killed_at = time.monotonic()
        wait_until(
            lambda: group.masters_seen() == {group.replica_port},
            60,
            "every sentinel to name the replica as the new master",
        )
        failover = round(time.monotonic() - killed_at, 1)

        assert producer.wait(300) == 0, (tmp_path / "producer.err").read_text()[-3000:]
        accepted, refused = _outcomes(outcomes)
        assert len(accepted) == LOAD

        # Everything the worker can still do, it does, on the promoted master.
        master = group.node(group.replica_port)
        wait_until(_settled(url, accepted, master), 240, "the load to settle after the failover")
        statuses = _statuses(url, accepted)
        lost_to_replication = sorted(t for t, s in statuses.items() if s != "SUCCESS")
        # What replication lost had never started: its record says PENDING.
        assert {statuses[t] for t in lost_to_replication} <= {"PENDING"}, statuses
        assert worker.proc.poll() is None, "the worker died instead of following the failover"

        # The same worker process consumes new work; health names the new master.
        more = publish_batch(env, 5)
        wait_until(
            lambda: all(s == "SUCCESS" for s in _statuses(url, more).values()),
            120,
            "new tasks after the failover",
        )
        after = _health(env)
        assert after["sentinel"]["status"] == "OK"
        assert f"127.0.0.1:{group.replica_port}" in str(after["sentinel"]["message"])
        assert "redis" not in after, after["redis"]  # the master answered

        # The reconciler re-publishes what replication lost, from the PENDING records.
        result = run_cli(env, "tasks", "reconcile", "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        republished = sorted(report["republished"])
        assert republished == lost_to_replication, (report, lost_to_replication)
        assert report["not_restorable"] == []
        wait_until(
            lambda: all(s == "SUCCESS" for s in _statuses(url, accepted).values()),
            180,
            f"all {LOAD} accepted tasks SUCCESS after reconcile",
        )
        recovered = round(time.monotonic() - killed_at, 1)
        assert worker.proc.poll() is None, "the worker was not restarted: the same process"
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        worker.terminate()

    lost = [t for t, s in _statuses(url, accepted).items() if s != "SUCCESS"]
    assert lost == []  # lost = 0 after reconcile
    runs = _runs(ledger, accepted)
    assert [t for t, n in runs.items() if n == 0] == [], "a SUCCESS record without a run"
    duplicates = sum(n - 1 for n in runs.values())
    record_property("tasks", LOAD)
    record_property("refused", len(refused))
    record_property("lost_to_replication", len(lost_to_replication))
    record_property("republished", len(republished))
    record_property("lost", len(lost))
    record_property("duplicates", duplicates)
    record_property("failover_seconds", failover)
    record_property("recovery_seconds", recovered)


@pytest.mark.timeout(600)
def test_what_replication_had_not_copied_is_lost_and_the_reconciler_brings_it_back(
    api_env: dict[str, str],
    tmp_path: Path,
    group: SentinelGroup,
    ledger: RedisServer,
    record_property: Callable[[str, object], None],
) -> None:
    """The loss made certain: the replica is frozen (SIGSTOP) and its link cut while the
    master accepts a batch, then the master dies. Those tasks are exactly what the failover
    loses; their PENDING records are how the reconciler finds and re-publishes them."""
    env = _env(api_env, group, ledger)
    url = env["APPLIANCE_DATABASE_URL"]
    replica = group.node(group.replica_port)
    copied = publish_batch(env, 50)
    wait_until(lambda: replica.llen("default") == 50, 30, "the replica to copy the first batch")

    group.replica.send_signal(signal.SIGSTOP)
    try:
        # Frozen, it cannot reconnect: the master holds the next writes for a replica that
        # is not there (a frozen but connected replica would still get them into its socket).
        group.node(group.master_port).client_kill_filter(_type="replica")
        uncopied = publish_batch(env, 30)  # the master accepts them; the replica is frozen
        assert group.node(group.master_port).llen("default") == 80
        group.kill_master()
    finally:
        group.replica.send_signal(signal.SIGCONT)
    killed_at = time.monotonic()
    wait_until(
        lambda: group.masters_seen() == {group.replica_port},
        120,
        "every sentinel to name the replica as the new master",
    )
    failover = round(time.monotonic() - killed_at, 1)
    assert replica.llen("default") == 50  # the 30 never reached it

    accepted = copied + uncopied
    worker = ApplianceProcess(["worker", "-c", "2"], env, tmp_path / "worker.log")
    try:
        worker.wait_for_output(" ready.")
        wait_until(_settled(url, accepted, replica), 240, "the copied tasks to run")
        statuses = _statuses(url, accepted)
        lost_to_replication = sorted(t for t, s in statuses.items() if s != "SUCCESS")
        assert lost_to_replication == sorted(uncopied), statuses
        assert {statuses[t] for t in uncopied} == {"PENDING"}

        result = run_cli(env, "tasks", "reconcile", "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        republished = sorted(report["republished"])
        assert republished == lost_to_replication, report
        wait_until(
            lambda: all(s == "SUCCESS" for s in _statuses(url, accepted).values()),
            180,
            f"all {len(accepted)} accepted tasks SUCCESS after reconcile",
        )
        recovered = round(time.monotonic() - killed_at, 1)
    finally:
        worker.terminate()

    lost = [t for t, s in _statuses(url, accepted).items() if s != "SUCCESS"]
    assert lost == []  # lost = 0 after reconcile
    runs = _runs(ledger, accepted)
    assert [t for t, n in runs.items() if n == 0] == [], "a SUCCESS record without a run"
    duplicates = sum(n - 1 for n in runs.values())
    assert duplicates == 0  # nothing lost ran before: re-publishing it runs it once
    record_property("tasks", len(accepted))
    record_property("lost_to_replication", len(lost_to_replication))
    record_property("republished", len(republished))
    record_property("lost", len(lost))
    record_property("duplicates", duplicates)
    record_property("failover_seconds", failover)
    record_property("recovery_seconds", recovered)
