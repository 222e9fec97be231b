"""Record hooks isolate their failures: a dead database never breaks a task."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.settings import get_settings
from appliance.records import signals


def test_a_failing_record_write_is_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database file inside a path that cannot exist: every write fails.
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", f"sqlite:///{tmp_path}/file/in/nothing.db")
    (tmp_path / "file").write_text("not a directory")
    get_settings.cache_clear()
    before = signals.write_errors
    signals._on_publish(
        sender="demo.add",
        body=([1, 2], {}, {}),
        headers={"id": "x", "task": "demo.add"},
        routing_key="default",
    )
    assert signals.write_errors == before + 1
    assert "task record not written" in caplog.text


def test_records_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("APPLIANCE_RECORDS_ENABLED", "false")
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", f"sqlite:///{tmp_path}/never.db")
    get_settings.cache_clear()
    before = signals.write_errors
    signals._on_publish(sender="demo.add", body=([1, 2], {}, {}), headers={"id": "y"})
    assert signals.write_errors == before
    assert not (tmp_path / "never.db").exists()


def test_publish_stamps_enqueued_at() -> None:
    headers: dict[str, object] = {}
    signals._stamp_enqueued_at(headers=headers)
    assert isinstance(headers["enqueued_at"], float)


def test_the_publish_time_comes_from_the_enqueued_at_header() -> None:
    """Celery's request context carries a message's custom headers as attributes."""
    from datetime import UTC, datetime

    from celery.app.task import Context

    stamped = Context({"id": "a", "task": "demo.add", "enqueued_at": 1_700_000_000.25})
    assert signals._published_at(stamped) == datetime.fromtimestamp(1_700_000_000.25, UTC)
    assert signals._published_at(Context({"id": "b", "task": "demo.add"})) is None  # stock
    assert signals._published_at(Context({"id": "c", "enqueued_at": "garbage"})) is None
