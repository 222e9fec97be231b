"""The idempotency helper without servers: a dict stands in for the three Redis commands.

Task bodies run as a worker runs them (the task current, a request with an id), but
without `Task.apply`, which would create and cache the app's result backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery._state import _task_stack

from appliance import idempotency
from appliance.broker import scripts
from appliance.tasks import demo


class KeyStore:
    """SET NX EX, GET and the compare-and-delete script, over a dict (TTLs recorded)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.ttls: dict[str, int] = {}
        self.history: list[tuple[bool, int | None]] = []  # (nx, ex) of every SET

    def set(self, name: str, value: str, nx: bool = False, ex: int | None = None) -> bool | None:
        self.history.append((nx, ex))
        if nx and name in self.values:
            return None
        self.values[name] = value
        if ex is not None:
            self.ttls[name] = ex
        return True

    def get(self, name: str) -> bytes | None:
        value = self.values.get(name)
        return value.encode() if value is not None else None

    def eval(self, script: str, numkeys: int, name: str, claim: str) -> int:
        assert script == scripts.source("delete_if_holds")
        if self.values.get(name) == claim:
            del self.values[name]
            return 1
        return 0


@contextmanager
def running(task: Any, **request: Any) -> Iterator[None]:
    _task_stack.push(task)
    task.push_request(**request)
    try:
        yield
    finally:
        task.pop_request()
        _task_stack.pop()


def charge(order_id: str, amount: float, task_id: str = "t-1") -> Any:
    with running(demo.charge, id=task_id):
        return demo.charge.run(order_id, amount)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> KeyStore:
    monkeypatch.setenv("APPLIANCE_RECORDS_ENABLED", "false")
    store = KeyStore()
    monkeypatch.setattr(idempotency, "_client", lambda: store)
    return store


def test_the_body_runs_once_per_key_and_duplicates_get_its_result(keys: KeyStore) -> None:
    first = charge("o-1", 5, task_id="t-1")
    again = charge("o-1", 5, task_id="t-2")
    other = charge("o-2", 5, task_id="t-3")
    assert again == first and other["charge_id"] != first["charge_id"]
    name = idempotency.idem_key("demo.charge", "o-1")
    assert name == "appliance:idem:demo.charge:o-1"
    assert idempotency.loads(keys.values[name])["result"] == first
    assert keys.ttls[name] == idempotency.C.IDEMPOTENCY_TTL_SECONDS


def test_a_body_that_raises_releases_its_claim(keys: KeyStore) -> None:
    with pytest.raises(ValueError, match="amount must be positive"):
        charge("o-3", 0)
    assert keys.values == {}


def test_the_claim_outlives_the_hard_time_limit(keys: KeyStore) -> None:
    charge("o-5", 5)
    with running(demo.charge, id="t-6", timelimit=(60, 50)):
        demo.charge.run("o-6", 5)
    default_claim, done, claim, _ = keys.history
    margin = idempotency.C.STOP_TIMEOUT_MARGIN_SECONDS
    assert default_claim == (True, 360 + margin)  # APPLIANCE_TASK_TIME_LIMIT's default
    assert done == (False, idempotency.C.IDEMPOTENCY_TTL_SECONDS)
    assert claim == (True, 60 + margin)  # this call's own hard limit


def test_a_duplicate_of_a_running_delivery_retries_later(keys: KeyStore) -> None:
    name = idempotency.idem_key("demo.charge", "o-4")
    keys.set(name, idempotency.dumps({"state": "running", "task_id": "first"}))

    class Task:
        name = "demo.charge"
        request = type("Request", (), {"id": "second"})()

        def retry(self, exc: BaseException, countdown: float, max_retries: None) -> Exception:
            assert countdown == idempotency.C.IDEMPOTENCY_BUSY_RETRY_SECONDS
            return RuntimeError(f"retry: {exc}")

    with pytest.raises(RuntimeError, match="held by delivery first, still running"):
        idempotency._duplicate(Task(), name, keys)  # type: ignore[arg-type]


def test_called_outside_a_task_it_just_runs(keys: KeyStore) -> None:
    assert idempotency.idempotent()(lambda: 7)() == 7
    assert keys.values == {}
