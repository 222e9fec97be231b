"""Final-state record writes are retried for a few seconds on a transient database error,
bounded, and every failed write of a worker node (pool children included) is counted
where the heartbeat reads it. Real SQLite files, locked by a second connection."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.config.settings import get_settings
from appliance.core import constants as C
from appliance.records import schema, signals, store
from appliance.records.db import dispose_all

LOCK_TIMEOUT = 0.3  # instead of DB_LOCK_TIMEOUT_SECONDS (2 s): the same logic, faster


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A migrated SQLite file with one PENDING record, id "t1"; fresh retry state."""
    database = tmp_path / "records.db"
    url = f"sqlite:///{database}"
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)
    get_settings.cache_clear()
    monkeypatch.setattr(C, "DB_LOCK_TIMEOUT_SECONDS", LOCK_TIMEOUT)
    monkeypatch.setattr(signals, "DB_LOCK_TIMEOUT_SECONDS", LOCK_TIMEOUT)
    monkeypatch.setattr(signals, "_database_down", False)
    monkeypatch.setattr(signals, "_node_errors", None)
    monkeypatch.setattr(signals, "_main_pid", None)
    dispose_all()
    schema.upgrade(url)
    store.record_published(url, task_id="t1", name="demo.add", args=[1, 2], kwargs={}, queue="q")
    yield url
    dispose_all()


class Lock:
    """Another connection holding the SQLite write lock (BEGIN EXCLUSIVE)."""

    def __init__(self, url: str) -> None:
        self.conn = sqlite3.connect(
            url.removeprefix("sqlite:///"),
            timeout=10,
            isolation_level=None,
            check_same_thread=False,
        )
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.rollback()
        self.conn.close()


def _succeed(task_id: str = "t1") -> float:
    """Run the postrun hook of a SUCCESS, as a pool child does; return its duration."""
    start = time.monotonic()
    signals._on_postrun(
        task_id=task_id, task=SimpleNamespace(name="demo.add"), retval=3, state="SUCCESS"
    )
    return time.monotonic() - start


def _status(url: str, task_id: str = "t1") -> str | None:
    record = store.get_record(url, task_id)
    return record["status"] if record else None


def test_a_lock_shorter_than_the_retry_window_loses_no_final_state(url: str) -> None:
    lock = Lock(url)
    # The outage: longer than one lock wait, shorter than the retries (0.25 + 0.5 + 1 s).
    release = threading.Timer(LOCK_TIMEOUT + 0.6, lock.release)
    release.start()
    before = signals.write_errors
    try:
        took = _succeed()
    finally:
        release.join()
    assert took > LOCK_TIMEOUT  # the first try did fail
    assert _status(url) == "SUCCESS" and signals.write_errors == before


def test_a_lasting_outage_costs_one_bounded_retry_round_then_single_tries(url: str) -> None:
    lock = Lock(url)
    try:
        before = signals.write_errors
        first = _succeed()
        assert first <= signals.FINAL_WRITE_BUDGET_SECONDS + 1
        assert signals.write_errors == before + 1 and signals._database_down
        second = _succeed()  # known down: one try, no pauses
        assert second < LOCK_TIMEOUT + 0.25 + 0.5 and signals.write_errors == before + 2
    finally:
        lock.release()
    _succeed()  # the database is back: written, and the next failure retries again
    assert _status(url) == "SUCCESS" and not signals._database_down


def test_a_workers_main_process_never_pauses_its_event_loop(url: str) -> None:
    signals._main_pid = os.getpid()  # as worker_init sets it
    lock = Lock(url)
    try:
        took = _succeed()
    finally:
        lock.release()
    assert took < LOCK_TIMEOUT + 0.25
    assert _status(url) == "PENDING"  # counted as a gap instead


def _fail_one_write() -> None:
    signals.note_write_error("_on_postrun", RuntimeError("database is locked"))


def test_failed_writes_of_pool_children_reach_the_main_process_count(url: str) -> None:
    signals._share_error_count()  # worker_init, before the pool forks
    before = signals.write_error_count()
    children = [multiprocessing.get_context("fork").Process(target=_fail_one_write) for _ in "ab"]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert signals.write_error_count() == before + 2
