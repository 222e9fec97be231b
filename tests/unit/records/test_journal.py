"""The record journal: entries survive JSON, a flush writes them in one go and trims only
what it wrote, and a database that is down keeps them waiting. A real SQLite file; the
journal list in a small in-memory stand-in (the ack script that fills it runs against a
real Redis in tests/integration/worker/test_consumers.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.records import journal, schema, store


class _List:
    """LRANGE / LTRIM / RPUSH of one Redis list."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.strings: dict[str, str] = {}
        self.down = False

    def llen(self, key: str) -> int:
        return len(self.items)

    def set(self, key: str, value: str, ex: int | None = None) -> None:
        self.strings[key] = value

    def delete(self, key: str) -> None:
        self.strings.pop(key, None)

    def rpush(self, key: str, value: str) -> None:
        self.items.append(value.encode())

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        if self.down:
            raise ConnectionError("Redis is down")
        return self.items[start : end + 1]

    def ltrim(self, key: str, start: int, end: int) -> None:
        self.items = self.items[start:]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    schema.upgrade(url)
    return url


def _published(url: str, *ids: str) -> None:
    for task_id in ids:
        store.record_published(
            url, task_id=task_id, name="demo.add", args=[1, 2], kwargs={}, queue="default"
        )


def test_an_entry_keeps_datetimes_and_makes_odd_results_json() -> None:
    started_at = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
    entry = journal.encode(
        "record_succeeded",
        {
            "task_id": "t1",
            "name": "demo.add",
            "result": {1, 2},  # not JSON: kept as its repr, as the store does
            "started": {"started_at": started_at, "args": [object()], "worker": "w@h"},
            "finished_at": started_at,
        },
    )
    writer, kwargs = journal.decode(entry)
    assert writer == "record_succeeded"
    assert kwargs["started"]["started_at"] == started_at
    assert kwargs["finished_at"] == started_at
    assert kwargs["result"] == repr({1, 2})
    assert isinstance(kwargs["started"]["args"], str)


def test_an_entry_naming_another_function_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown writer"):
        journal.decode('{"w": "delete_records", "kw": {}}')


def test_a_flush_writes_every_entry_and_trims_what_it_wrote(url: str) -> None:
    _published(url, "a", "b", "c")
    redis = _List()
    finished = datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)
    for task_id in ("a", "b"):
        redis.rpush("k", journal.encode("record_succeeded", {
            "task_id": task_id, "name": "demo.add", "result": 3, "finished_at": finished,
        }))  # fmt: skip
    redis.rpush("k", journal.encode("record_failed", {
        "task_id": "c", "name": "demo.add", "error": "ValueError: x", "traceback": None,
    }))  # fmt: skip
    redis.rpush("k", "not json")
    flusher = journal.Flusher(redis, "k", url)
    assert flusher.flush(everything=True) == 4
    assert redis.items == []
    records = {r["id"]: r for r in store.list_records(url)}
    assert records["a"]["status"] == records["b"]["status"] == "SUCCESS"
    assert records["a"]["result"] == 3
    assert records["c"]["status"] == "FAILURE" and records["c"]["error"] == "ValueError: x"


def test_a_late_retry_entry_never_overwrites_the_next_attempts_success(url: str) -> None:
    _published(url, "r")
    redis = _List()
    redis.rpush("k", journal.encode("record_succeeded", {
        "task_id": "r", "name": "demo.flaky", "result": "ok",
    }))  # fmt: skip
    redis.rpush("k", journal.encode("record_retry", {
        "task_id": "r", "name": "demo.flaky", "error": "boom", "retries": 1,
    }))  # fmt: skip
    journal.Flusher(redis, "k", url).flush(everything=True)
    assert store.get_record(url, "r")["status"] == "SUCCESS"  # type: ignore[index]


def test_a_bulk_write_updates_in_runs_inserts_missing_rows_and_keeps_the_order(
    url: str,
) -> None:
    # "a".."e" were published with records; "m" by a producer that writes none; "x" is
    # retried, then succeeds, then a late retry arrives, all in one batch.
    _published(url, "a", "b", "c", "d", "e", "x")
    succeeded = [("record_succeeded", {"task_id": t, "name": "demo.add", "result": i})
                 for i, t in enumerate(("a", "b", "m", "c"))]  # fmt: skip
    writes = [
        *succeeded,
        ("record_failed", {"task_id": "d", "name": "demo.add", "error": "E", "traceback": None}),
        ("record_failed", {"task_id": "e", "name": "demo.add", "error": "F", "traceback": None}),
        ("record_retry", {"task_id": "x", "name": "demo.flaky", "error": "r1", "retries": 1}),
        ("record_succeeded", {"task_id": "x", "name": "demo.flaky", "result": "ok"}),
        ("record_retry", {"task_id": "x", "name": "demo.flaky", "error": "late", "retries": 1}),
    ]
    store.write_many(url, writes)
    records = {r["id"]: r for r in store.list_records(url)}
    assert {t: records[t]["result"] for t in ("a", "b", "m", "c")} == {
        "a": 0,
        "b": 1,
        "m": 2,
        "c": 3,
    }
    assert records["m"]["status"] == "SUCCESS" and records["m"]["name"] == "demo.add"
    assert (records["d"]["error"], records["e"]["error"]) == ("E", "F")
    assert records["x"]["status"] == "SUCCESS" and records["x"]["result"] == "ok"
    with pytest.raises(ValueError, match="not a bulk writer"):
        store.write_many(url, [("delete_records", {})])


def test_entries_wait_while_the_database_is_down(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis = _List()
    redis.rpush("k", journal.encode("record_succeeded", {
        "task_id": "x", "name": "demo.add", "result": 1,
    }))  # fmt: skip
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    flusher = journal.Flusher(redis, "default@h", missing)
    assert flusher.flush(now=0.0) == 0
    assert len(redis.items) == 1  # kept for later
    assert not flusher.due(0.5) and flusher.due(journal.RETRY_SECONDS)
    assert "task records not flushed" in caplog.text
    # What `appliance health` reports meanwhile (record_journal).
    waiting = json.loads(redis.strings["appliance:records:journal-waiting:default@h"])
    assert waiting["waiting"] == 1 and "OperationalError" in waiting["error"]
    flusher.url = url
    _published(url, "x")
    assert flusher.flush(now=5.0) == 1
    assert store.get_record(url, "x")["status"] == "SUCCESS"  # type: ignore[index]
    assert redis.strings == {}


def test_redis_down_keeps_the_journal_for_the_next_flush(url: str) -> None:
    redis: Any = _List()
    redis.rpush("k", journal.encode("record_succeeded", {
        "task_id": "y", "name": "demo.add", "result": 1,
    }))  # fmt: skip
    redis.down = True
    flusher = journal.Flusher(redis, "k", url)
    assert flusher.flush(now=0.0) == 0
    redis.down = False
    assert flusher.flush(now=2.0) == 1
