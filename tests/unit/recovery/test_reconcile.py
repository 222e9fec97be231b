"""The reconciler's matching logic: real SQLite records, a fake broker view.

The Redis side (the queue-scanning script, unacked, the lock on a real server, workers)
runs for real in tests/integration/faults/test_storage.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from appliance.broker.lease import Lease
from appliance.config.settings import Settings, load_settings
from appliance.core import keys
from appliance.records import schema, store
from appliance.records.db import session_scope
from appliance.records.models import TaskRecord
from appliance.recovery import reconcile as R
from appliance.recovery import redis_view
from tests.helpers.fake_redis import FakeRedis


class FakeBroker:
    """Sets of ids standing in for Redis's lists, the workers' memory and the results."""

    def __init__(self, redis: FakeRedis | None = None) -> None:
        self.redis = redis or FakeRedis()
        self.present: set[str] = set()
        self.held: set[str] = set()
        self.purged_ids: set[str] = set()
        self.results: set[str] = set()
        self.metas: dict[str, dict[str, Any]] = {}
        self.published: list[dict[str, Any]] = []
        self.scans = 0
        self.scanned_queues: list[str] = []
        self.on_scan: Callable[[int], None] | None = None
        self.before_publish: Callable[[], None] | None = None
        self.closed = False

    def lock(self) -> redis_view.Lock:
        return Lease(self.redis, keys.RECONCILE_LOCK_KEY, redis_view.LOCK_TTL_SECONDS)  # type: ignore[arg-type]

    def message_ids(self, queues: Sequence[str]) -> set[str]:
        self.scans += 1
        self.scanned_queues = list(queues)
        if self.on_scan:
            self.on_scan(self.scans)
        return set(self.present)

    def held_by_workers(self, ids: Sequence[str]) -> set[str]:
        return self.held & set(ids)

    def purged(self, ids: Sequence[str]) -> set[str]:
        return self.purged_ids & set(ids)

    def result_metas(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {i: self.metas.get(i, {}) for i in self.results & set(ids)}

    def republish(self, record: dict[str, Any]) -> None:
        if self.before_publish:
            self.before_publish()
        self.published.append(record)
        self.present.add(record["id"])

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    schema.upgrade(url)
    return load_settings(database_url=url)


def _pending(
    settings: Settings,
    task_id: str,
    *,
    age: float = 600,
    name: str = "demo.add",
    args: Any = (1, 2),
    kwargs: Any = None,
    queue: str | None = "default",
    parent_id: str | None = None,
    root_id: str | None = "self",
) -> None:
    url = settings.effective_database_url
    store.record_published(
        url,
        task_id=task_id,
        name=name,
        args=list(args) if isinstance(args, tuple) else args,
        kwargs={"x": 1} if kwargs is None else kwargs,
        queue=queue,
        parent_id=parent_id,
        root_id=task_id if root_id == "self" else root_id,
    )
    with session_scope(url) as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id == task_id)
            .values(created_at=store.now() - timedelta(seconds=age))
        )


def _run(settings: Settings, broker: FakeBroker, **kwargs: Any) -> R.Report:
    return R.reconcile(settings, broker=broker, confirm_seconds=0, **kwargs)


def test_a_lost_message_is_republished_with_what_the_record_keeps(settings: Settings) -> None:
    _pending(settings, "lost", args=[2, 3], kwargs={"y": 4}, queue="low")
    broker = FakeBroker()
    report = _run(settings, broker)
    assert report.republished == ["lost"] and report.pending == 1
    [record] = broker.published
    assert (record["id"], record["name"], record["args"], record["kwargs"], record["queue"]) == (
        "lost",
        "demo.add",
        [2, 3],
        {"y": 4},
        "low",
    )
    # The record itself is untouched: still PENDING, same creation time.
    assert store.get_record(settings.effective_database_url, "lost")["status"] == "PENDING"  # type: ignore[index]
    # The next run finds the message and does nothing.
    assert _run(settings, broker).republished == []
    assert len(broker.published) == 1


def test_a_message_still_in_redis_is_left_alone(settings: Settings) -> None:
    for task_id in ("queued", "unacked", "lost"):
        _pending(settings, task_id)
    broker = FakeBroker()
    broker.present = {"queued", "unacked"}
    report = _run(settings, broker)
    assert report.republished == ["lost"]
    assert report.in_broker == 2 and report.pending == 3


def test_young_and_non_pending_records_are_not_candidates(settings: Settings) -> None:
    url = settings.effective_database_url
    _pending(settings, "young", age=5)
    _pending(settings, "done")
    store.record_succeeded(url, task_id="done", name="demo.add", result=3)
    _pending(settings, "running")
    store.record_started(
        url,
        task_id="running",
        name="demo.add",
        args=[1, 2],
        kwargs={},
        queue="default",
        worker="w",
        retries=0,
    )
    broker = FakeBroker()
    report = _run(settings, broker, min_age=60)
    assert (report.pending, report.republished, broker.scans) == (0, [], 0)
    assert _run(settings, broker, min_age=1).republished == ["young"]


def test_the_default_min_age_is_the_setting(settings: Settings) -> None:
    _pending(settings, "ten-minutes", age=600)
    assert _run(settings, FakeBroker()).min_age == 300
    strict = settings.model_copy(update={"reconcile_min_age": 900})
    assert _run(strict, FakeBroker()).pending == 0


def test_only_ids_missing_from_both_scans_count(settings: Settings) -> None:
    """A message in transit (popped, not yet in unacked) is missed by one scan only."""
    _pending(settings, "in-transit")
    _pending(settings, "lost")
    broker = FakeBroker()

    def arrives(scan: int) -> None:
        if scan == 2:
            broker.present.add("in-transit")

    broker.on_scan = arrives
    report = R.reconcile(settings, broker=broker, confirm_seconds=0.01)
    assert broker.scans == 2
    assert report.republished == ["lost"] and report.in_broker == 1


def test_no_second_scan_when_the_first_finds_everything(settings: Settings) -> None:
    _pending(settings, "queued")
    broker = FakeBroker()
    broker.present = {"queued"}
    R.reconcile(settings, broker=broker, confirm_seconds=5)  # would sleep if it rescanned
    assert broker.scans == 1


def test_tasks_held_by_workers_or_with_a_result_are_not_republished(settings: Settings) -> None:
    for task_id in ("eta-held", "ran", "lost"):
        _pending(settings, task_id)
    broker = FakeBroker()
    broker.held = {"eta-held"}
    broker.results = {"ran"}
    report = _run(settings, broker)
    assert report.republished == ["lost"]
    assert (report.held_by_workers, report.has_result) == (1, 1)


def test_a_record_that_started_while_we_looked_is_not_republished(settings: Settings) -> None:
    url = settings.effective_database_url
    _pending(settings, "starts")
    broker = FakeBroker()

    def started(scan: int) -> None:
        store.record_started(
            url,
            task_id="starts",
            name="demo.add",
            args=[1, 2],
            kwargs={},
            queue="default",
            worker="w",
            retries=0,
        )

    broker.on_scan = started
    report = _run(settings, broker)
    assert report.republished == [] and report.moved_on == 1


def test_workflow_members_and_unreadable_arguments_are_only_reported(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    _pending(settings, "child", parent_id="parent")
    _pending(settings, "chain-member", root_id="the-chain")
    _pending(settings, "opaque", args=None)
    _pending(settings, "standalone", root_id=None)
    broker = FakeBroker()
    report = _run(settings, broker)
    assert report.republished == ["standalone"]
    assert sorted(report.not_restorable) == ["chain-member", "child", "opaque"]
    assert "appliance tasks retry child --force" in caplog.text


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": "a", "name": "t", "args": [], "kwargs": {}, "root_id": "a"}, None),
        ({"id": "a", "name": "t", "args": [], "kwargs": None, "root_id": None}, None),
        ({"id": "a", "name": "", "args": [], "kwargs": {}}, "no task name"),
        ({"id": "a", "name": "t", "args": [], "kwargs": {}, "parent_id": "p"}, "workflow"),
        ({"id": "a", "name": "t", "args": [], "kwargs": {}, "root_id": "r"}, "workflow"),
        ({"id": "a", "name": "t", "args": "(1,)", "kwargs": {}}, "JSON array"),
        ({"id": "a", "name": "t", "args": [], "kwargs": [1]}, "JSON object"),
    ],
)
def test_restorable(record: dict[str, Any], problem: str | None) -> None:
    found = R.restorable(record)
    assert found is None if problem is None else problem in (found or "")


def test_the_records_queues_are_scanned_besides_the_configured_ones(settings: Settings) -> None:
    _pending(settings, "old-queue", queue="retired")
    broker = FakeBroker()
    _run(settings, broker)
    assert broker.scanned_queues == [*settings.queues, "retired"]
    assert "retired" not in settings.queues


def test_a_dry_run_publishes_nothing_and_takes_no_lock(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    _pending(settings, "lost")
    broker = FakeBroker()
    broker.redis.set(keys.RECONCILE_LOCK_KEY, "someone-else", nx=True, px=60_000)
    report = _run(settings, broker, dry_run=True)
    assert report.republished == ["lost"] and report.dry_run and not report.locked_out
    assert broker.published == []
    assert "would re-publish task lost" in caplog.text


def test_a_second_reconciler_does_nothing_while_the_first_holds_the_lock(
    settings: Settings,
) -> None:
    _pending(settings, "lost")
    shared = FakeRedis()
    first, second = FakeBroker(shared), FakeBroker(shared)
    reports: list[R.Report] = []
    # While the first is about to publish, the second (another host) runs in full.
    first.before_publish = lambda: reports.append(_run(settings, second))
    assert _run(settings, first).republished == ["lost"]
    assert reports[0].locked_out and reports[0].republished == [] and second.published == []
    assert "another reconciler" in reports[0].summary()
    assert shared.get(keys.RECONCILE_LOCK_KEY) is None  # released after the run


def test_a_reconciler_that_lost_its_lock_stops(settings: Settings) -> None:
    for task_id in ("a", "b", "c"):
        _pending(settings, task_id)
    broker = FakeBroker()

    def stolen() -> None:
        if len(broker.published) == 1:  # the lease ran out and someone else took it
            broker.redis.strings[keys.RECONCILE_LOCK_KEY] = (b"another-host", None)

    broker.before_publish = stolen
    report = _run(settings, broker)
    assert len(report.republished) == 2 and report.locked_out
    assert "lost the lock" in report.summary()
    assert broker.redis.get(keys.RECONCILE_LOCK_KEY) == b"another-host"  # not released: not ours


def test_an_empty_run_touches_no_broker(settings: Settings) -> None:
    report = R.reconcile(settings, broker=None)  # RedisBroker would need a Redis
    assert report.pending == 0 and report.republished == []


def test_unacked_values_name_their_task() -> None:
    raw = json.dumps([{"headers": {"id": "t1"}, "body": "e30="}, "default", "default"])
    assert redis_view.unacked_task_id(raw.encode()) == "t1"
    assert redis_view.unacked_task_id(b"garbage") is None
    assert redis_view.unacked_task_id(b"[]") is None


def test_the_report_as_json_and_text(settings: Settings) -> None:
    _pending(settings, "lost")
    report = _run(settings, FakeBroker())
    data = report.to_dict()
    assert data["republished"] == ["lost"] and data["pending"] == 1
    assert report.summary().startswith("re-published 1 of 1 task(s) PENDING for over 300s")


def test_the_cli_and_the_beat_entry(settings: Settings) -> None:
    from appliance.cli import cli
    from appliance.config.profile import celery_config

    result = CliRunner().invoke(cli, ["tasks", "reconcile", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.output and "--min-age" in result.output
    result = CliRunner().invoke(cli, ["tasks", "reconcile", "--min-age", "-1"])
    assert result.exit_code == 2
    entry = celery_config(settings)["beat_schedule"]["appliance-reconcile"]
    assert entry["task"] == "appliance.reconcile" and entry["schedule"] == R.SCHEDULE_SECONDS


def test_the_min_age_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.errors import ConfigError

    monkeypatch.setenv("APPLIANCE_RECONCILE_MIN_AGE", "0")
    with pytest.raises(ConfigError, match="APPLIANCE_RECONCILE_MIN_AGE"):
        load_settings()


def test_a_pending_record_whose_task_ran_takes_the_final_state_of_its_result(
    settings: Settings,
) -> None:
    """Its record writes failed (a database outage): the result says what happened, so
    the record is settled and never re-published, even once the result expires."""
    url = settings.effective_database_url
    for task_id in ("ran", "failed", "still-running"):
        _pending(settings, task_id)
    broker = FakeBroker()
    broker.results = {"ran", "failed", "still-running"}
    broker.metas = {
        "ran": {"status": "SUCCESS", "result": 42},
        "failed": {
            "status": "FAILURE",
            "result": {"exc_type": "KeyError", "exc_message": "'x'"},
            "traceback": "Traceback ...",
        },
        "still-running": {"status": "STARTED"},
    }
    report = _run(settings, broker)
    assert report.republished == [] and sorted(report.settled) == ["failed", "ran"]
    ran, failed = store.get_record(url, "ran"), store.get_record(url, "failed")
    assert ran is not None and (ran["status"], ran["result"]) == ("SUCCESS", 42)
    assert failed is not None and failed["status"] == "FAILURE"
    assert failed["error"] == "KeyError: 'x'"
    assert (store.get_record(url, "still-running") or {})["status"] == "PENDING"
    broker.results = set()  # the results expire: only the one still PENDING is a suspect
    assert _run(settings, broker).republished == ["still-running"]


def test_a_purged_task_is_settled_revoked_and_never_republished(settings: Settings) -> None:
    """Given PENDING records whose messages a purge deleted, when the reconciler runs,
    then they end REVOKED as purged and nothing is published."""
    from appliance.broker.purge import PURGED_REASON

    _pending(settings, "p1", age=600)
    _pending(settings, "lost", age=600)
    broker = FakeBroker()
    broker.purged_ids = {"p1"}
    report = _run(settings, broker)
    assert report.purged == ["p1"]
    assert [r["id"] for r in broker.published] == ["lost"]
    record = store.get_record(settings.effective_database_url, "p1")
    assert record is not None and (record["status"], record["error"]) == ("REVOKED", PURGED_REASON)
