"""Task records on a real SQLite file: migrations, writes from every stage, queries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from appliance.errors import ConfigError, DatabaseUnavailableError
from appliance.records import maintenance, schema, store
from appliance.records.db import get_engine, session_scope, translate_errors
from appliance.records.models import TaskRecord


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    schema.upgrade(url)
    return url


def test_upgrade_is_idempotent_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert schema.schema_state(url).current is None
    assert schema.upgrade(url).current is None
    assert schema.upgrade(url).is_current
    with get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_ensure_current_refuses_an_old_schema_without_auto_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with pytest.raises(ConfigError, match="appliance db upgrade"):
        schema.ensure_current(url, auto_upgrade=False)
    schema.ensure_current(url, auto_upgrade=True)
    assert schema.schema_state(url).is_current


def test_a_newer_schema_is_refused(db_url: str) -> None:
    with get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num='9999'")
    with pytest.raises(ConfigError, match="newer"):
        schema.upgrade(db_url)


def test_life_of_a_task(db_url: str) -> None:
    store.record_published(
        db_url, task_id="t1", name="demo.add", args=[2, 3], kwargs={}, queue="default", root_id="t1"
    )
    assert store.get_record(db_url, "t1")["status"] == "PENDING"
    store.record_started(
        db_url,
        task_id="t1",
        name="demo.add",
        args=[2, 3],
        kwargs={},
        queue="default",
        worker="w@h",
        retries=0,
    )
    store.record_progress(db_url, task_id="t1", percent=40, message="working")
    record = store.get_record(db_url, "t1")
    assert (record["status"], record["progress"], record["worker"]) == ("PROGRESS", 40, "w@h")
    store.record_succeeded(db_url, task_id="t1", name="demo.add", result=5)
    record = store.get_record(db_url, "t1")
    assert (record["status"], record["result"], record["progress"]) == ("SUCCESS", 5, 100)
    for key in (
        "id",
        "name",
        "status",
        "progress",
        "result",
        "error",
        "worker",
        "created_at",
        "started_at",
        "finished_at",
    ):
        assert key in record
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]


def test_republishing_keeps_the_existing_record(db_url: str) -> None:
    store.record_published(db_url, task_id="t2", name="demo.flaky", args=[], kwargs={}, queue="q")
    store.record_retry(
        db_url, task_id="t2", name="demo.flaky", error="ConnectionError: x", retries=1
    )
    store.record_published(db_url, task_id="t2", name="demo.flaky", args=[], kwargs={}, queue="q")
    record = store.get_record(db_url, "t2")
    assert (record["status"], record["retries"], record["error"]) == (
        "RETRY",
        1,
        "ConnectionError: x",
    )


def test_a_task_from_a_foreign_producer_gets_a_record_at_start(db_url: str) -> None:
    store.record_started(
        db_url,
        task_id="t3",
        name="x.y",
        args=[1],
        kwargs={"a": 1},
        queue="default",
        worker="w",
        retries=0,
    )
    store.record_failed(db_url, task_id="t3", name="x.y", error="ValueError: bad", traceback="tb")
    record = store.get_record(db_url, "t3")
    assert (record["status"], record["error"], record["args"]) == (
        "FAILURE",
        "ValueError: bad",
        [1],
    )


def test_unserialisable_results_are_stored_as_repr(db_url: str) -> None:
    store.record_succeeded(db_url, task_id="t4", name="n", result={1, 2})
    assert store.get_record(db_url, "t4")["result"] == "{1, 2}"


def test_list_filters_and_cleanup_of_old_finished_records(db_url: str) -> None:
    for i, status in enumerate(["SUCCESS", "FAILURE", "PENDING", "SUCCESS"]):
        store.record_published(
            db_url, task_id=f"c{i}", name="demo.add", args=[], kwargs={}, queue="q"
        )
        if status != "PENDING":
            store.record_succeeded(db_url, task_id=f"c{i}", name="demo.add", result=i)
        if status == "FAILURE":
            store.record_failed(db_url, task_id=f"c{i}", name="demo.add", error="E", traceback=None)
    old = store.now() - timedelta(days=40)
    with session_scope(db_url) as session:
        session.execute(
            update(TaskRecord).where(TaskRecord.id.in_(["c0", "c1", "c2"])).values(created_at=old)
        )
    assert [r["id"] for r in store.list_records(db_url, status="FAILURE")] == ["c1"]
    assert {r["id"] for r in store.list_records(db_url, since=store.now() - timedelta(days=1))} == {
        "c3"
    }
    deleted = maintenance.delete_finished_before(db_url, store.now() - timedelta(days=30))
    assert deleted == 2
    assert {r["id"] for r in store.list_records(db_url)} == {"c2", "c3"}  # old PENDING is kept


def test_missing_schema_and_unreachable_database_are_one_line_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with (
        pytest.raises(DatabaseUnavailableError, match="appliance db upgrade"),
        translate_errors(url),
    ):
        store.list_records(url)
    bad = "sqlite:////proc/no/such/dir/x.db"
    with pytest.raises(DatabaseUnavailableError, match="unreachable"), translate_errors(bad):
        store.ping(bad)


def test_a_late_retry_write_never_overwrites_the_next_attempts_final_state(db_url: str) -> None:
    # The retry message is published before the RETRY record is written, so the next
    # attempt can finish first (seen with two pool children).
    store.record_published(db_url, task_id="r1", name="demo.flaky", args=[], kwargs={}, queue="q")
    store.record_started(
        db_url,
        task_id="r1",
        name="demo.flaky",
        args=[],
        kwargs={},
        queue="q",
        worker="w",
        retries=2,
    )
    store.record_succeeded(db_url, task_id="r1", name="demo.flaky", result={"attempts": 3})
    store.record_retry(
        db_url, task_id="r1", name="demo.flaky", error="ConnectionError: x", retries=2
    )
    record = store.get_record(db_url, "r1")
    assert record is not None and (record["status"], record["retries"]) == ("SUCCESS", 2)


def _started(worker: str = "w1@host", **overrides: object) -> dict[str, object]:
    return {
        "task_id": "d1",
        "name": "demo.add",
        "args": [1, 2],
        "kwargs": {},
        "queue": "default",
        "worker": worker,
        "retries": 0,
        "parent_id": None,
        "root_id": None,
        "started_at": store.now(),
        **overrides,
    }


def _record_started(url: str, fields: dict[str, Any]) -> None:
    store.record_started(url, **fields)


def test_a_short_task_gets_one_write_with_its_started_fields(db_url: str) -> None:
    from appliance.records.deferred import DeferredStarted

    store.record_published(
        db_url, task_id="d1", name="demo.add", args=[1, 2], kwargs={}, queue="default"
    )
    deferred = DeferredStarted(30.0, _record_started)  # never due within this test
    deferred.add("d1", db_url, _started())
    fields = deferred.take("d1")
    assert fields is not None and deferred.take("d1") is None
    assert store.get_record(db_url, "d1")["status"] == "PENDING"  # type: ignore[index]
    store.record_succeeded(db_url, task_id="d1", name="demo.add", result=3, started=fields)
    record = store.get_record(db_url, "d1")
    assert record is not None
    assert (record["status"], record["result"], record["worker"]) == ("SUCCESS", 3, "w1@host")
    assert record["finished_at"] >= record["started_at"] >= record["created_at"]


def test_a_long_task_shows_started_and_its_final_state_lands_last(db_url: str) -> None:
    from appliance.records.deferred import DeferredStarted
    from tests.helpers.processes import wait_until

    store.record_published(
        db_url, task_id="d1", name="demo.add", args=[1, 2], kwargs={}, queue="default"
    )
    deferred = DeferredStarted(0.05, _record_started)
    deferred.add("d1", db_url, _started())
    wait_until(
        lambda: (store.get_record(db_url, "d1") or {}).get("status") == "STARTED",
        10,
        "the deferred STARTED write",
        0.01,
    )
    assert deferred.take("d1") is None  # written already: the final write carries nothing
    store.record_succeeded(db_url, task_id="d1", name="demo.add", result=3, started=None)
    # A STARTED that comes late (a redelivered copy, a slow thread) never undoes it.
    store.record_started(db_url, **_started(worker="w2@host"))  # type: ignore[arg-type]
    record = store.get_record(db_url, "d1")
    assert record is not None
    assert (record["status"], record["worker"]) == ("SUCCESS", "w1@host")


@pytest.mark.parametrize("journal", [False, True], ids=["direct", "journal"])
def test_a_foreign_producers_record_is_created_when_published_never_after_it_started(
    db_url: str, journal: bool
) -> None:
    """A task with no PENDING record (a plain Celery client's) gets created_at from its
    message (the enqueued_at header), else its start; never after started_at, not the time
    of the (deferred) write. Also through the consumers' journal (datetimes round-trip)."""
    from appliance.records import journal as record_journal

    started_at = store.now() - timedelta(seconds=5)
    published = started_at - timedelta(seconds=2)
    ahead = started_at + timedelta(seconds=3)  # the publisher's clock runs ahead
    for task_id, created_at in (("f1", published), ("f2", None), ("f3", ahead)):
        started = _started(task_id=task_id, started_at=started_at, created_at=created_at)
        kwargs = {"task_id": task_id, "name": "demo.add", "result": 3, "started": started}
        if journal:
            store.write_many(
                db_url, [record_journal.decode(record_journal.encode("record_succeeded", kwargs))]
            )
        else:
            store.record_succeeded(db_url, **kwargs)
    records = {t: store.get_record(db_url, t) or {} for t in ("f1", "f2", "f3")}
    assert {t: r["created_at"] for t, r in records.items()} == {
        "f1": published.isoformat(),
        "f2": started_at.isoformat(),
        "f3": started_at.isoformat(),
    }
    store.record_started(db_url, **_started(task_id="f4", created_at=published))  # type: ignore[arg-type]
    record = store.get_record(db_url, "f4")
    assert record is not None and record["created_at"] == published.isoformat()
    assert record["created_at"] <= record["started_at"]


def test_a_published_record_keeps_its_created_at_when_the_task_starts(db_url: str) -> None:
    store.record_published(db_url, task_id="p1", name="demo.add", args=[], kwargs={}, queue="q")
    created = (store.get_record(db_url, "p1") or {})["created_at"]
    earlier = store.now() - timedelta(days=1)
    store.record_started(db_url, **_started(task_id="p1", created_at=earlier))  # type: ignore[arg-type]
    assert (store.get_record(db_url, "p1") or {})["created_at"] == created
