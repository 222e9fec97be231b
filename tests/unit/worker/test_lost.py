"""The bound on redeliveries after a lost pool child (appliance/worker/lost.py).

The counting and the decision run against an in-memory stand-in for the few Redis
commands involved; the Request runs Celery's real on_failure on a real (in-memory) app.
The real thing - children killed for real - is tests/integration/faults/test_pool.py.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Celery, signals

from appliance.broker import deadletter
from appliance.config.settings import get_settings
from appliance.core import keys
from appliance.worker import lost as worker_lost


class _Pipe:
    def __init__(self, client: FakeRedis) -> None:
        self.client, self.ops = client, []  # type: list[tuple[str, tuple[Any, ...]]]

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.ops.append((name, args))

    def execute(self) -> list[Any]:
        return [getattr(self.client, name)(*args) for name, args in self.ops]


class FakeRedis:
    """Counters with TTLs, a hash and a sorted set; `down = True` fails every command."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.ttls: dict[str, int] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused.")

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self)

    def incr(self, key: str) -> int:
        self._check()
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]

    def expire(self, key: str, seconds: int) -> bool:
        self._check()
        self.ttls[key] = seconds
        return True

    def delete(self, key: str) -> int:
        self._check()
        self.ttls.pop(key, None)
        return 1 if self.values.pop(key, None) is not None else 0

    def hset(self, key: str, field: str, value: str) -> int:
        self._check()
        self.hashes.setdefault(key, {})[field] = value
        return 1

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self._check()
        self.zsets.setdefault(key, {}).update(mapping)
        return len(mapping)


# --- counting and wording -----------------------------------------------------------


def test_each_loss_is_counted_per_task_id_with_a_ttl() -> None:
    client = FakeRedis()
    assert [worker_lost.count_loss(client, "a") for _ in range(3)] == [1, 2, 3]
    assert worker_lost.count_loss(client, "b") == 1
    assert client.values == {"appliance:lost:a": 3, "appliance:lost:b": 1}
    assert client.ttls["appliance:lost:a"] == worker_lost.LOST_KEY_TTL_SECONDS
    assert worker_lost.lost_key("a").startswith(keys.KEY_PREFIX)


def test_forgetting_starts_the_count_over() -> None:
    client = FakeRedis()
    worker_lost.count_loss(client, "a")
    worker_lost.count_loss(client, "a")
    worker_lost.forget_losses(client, "a")
    assert worker_lost.count_loss(client, "a") == 1


@pytest.mark.parametrize(
    ("losses", "limit", "expected"),
    [(1, 3, False), (2, 3, False), (3, 3, True), (4, 3, True), (1, 1, True), (99, 0, False)],
)
def test_it_gives_up_at_exactly_the_bound_and_never_with_zero(
    losses: int, limit: int, expected: bool
) -> None:
    assert worker_lost.gives_up(losses, limit) is expected


_EXITED = "Worker exited prematurely:"


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (WorkerLostError(f"{_EXITED} signal 9 (SIGKILL) Job: 12."), "signal 9 (SIGKILL)"),
        (WorkerLostError(f"{_EXITED} exitcode 3 Job: 1."), "exitcode 3"),
        (WorkerLostError(f"{_EXITED} exitcode 70."), "exitcode 70"),
        (SystemExit(3), "exitcode 3"),
        (SystemExit(None), "exitcode 0"),
        (SystemExit("bye"), "exitcode 1"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (WorkerLostError(), "WorkerLostError"),
    ],
)  # fmt: skip
def test_the_childs_end_is_named_as_billiard_names_it(exc: BaseException, status: str) -> None:
    assert worker_lost.child_status(exc) == status


def test_reasons_name_the_count_the_end_and_the_setting() -> None:
    assert worker_lost.give_up_reason("signal 9 (SIGKILL)", 3, 3) == (
        "WorkerLostError: the pool child running it was lost 3 times (last: signal 9 "
        "(SIGKILL)); not redelivered, dead-lettered (APPLIANCE_MAX_WORKER_LOST=3)"
    )
    assert worker_lost.requeue_reason("exitcode 3", 1, 3).endswith("requeued (1 of 3)")
    assert worker_lost.requeue_reason("exitcode 3", 5, 0).endswith("requeued (5, no bound)")


def test_the_setting_defaults_to_three_and_refuses_negatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.errors import ConfigError

    assert get_settings().max_worker_lost == 3
    monkeypatch.setenv("APPLIANCE_MAX_WORKER_LOST", "-1")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="APPLIANCE_MAX_WORKER_LOST"):
        get_settings()


# --- the Request in Celery's real on_failure ----------------------------------------


class _Channel:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client

    @contextmanager
    def conn_or_acquire(self) -> Iterator[FakeRedis]:
        yield self.client


class _Message:
    """What the Request reads of a kombu Redis message."""

    def __init__(self, task_id: str, client: FakeRedis) -> None:
        self.headers = {"id": task_id, "task": "t.poison", "retries": 0}
        self.payload = ([], {}, {"callbacks": None, "errbacks": None, "chain": None})
        self.body = json.dumps(self.payload).encode()
        self.content_type, self.content_encoding = "application/json", "utf-8"
        self.delivery_info = {"exchange": "", "routing_key": "default"}
        self.properties: dict[str, Any] = {"delivery_tag": "tag"}
        self._raw = {"body": "e30=", "headers": self.headers, "properties": self.properties}
        self.channel = _Channel(client)


class _Outcome:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ack(self, *_: Any) -> None:
        self.calls.append("ack")

    def reject(self, _logger: Any, _errors: Any, requeue: bool) -> None:
        self.calls.append("requeue" if requeue else "reject")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.setenv("APPLIANCE_RECORDS_ENABLED", "false")
    get_settings.cache_clear()
    app = Celery("unit", set_as_current=False, backend="cache+memory://")
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)

    @app.task(name="t.poison", shared=False)
    def poison() -> None:  # pragma: no cover - never runs here
        pass

    return app


def _lose_child(
    app: Celery, client: FakeRedis, task_id: str = "id-1", exc: BaseException | None = None
) -> tuple[_Outcome, worker_lost.Request]:
    outcome = _Outcome()
    task = app.tasks["t.poison"]
    request = worker_lost.Request(
        _Message(task_id, client),
        app=app,
        task=task,
        on_ack=outcome.ack,
        on_reject=outcome.reject,
    )
    try:
        raise exc or WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL) Job: 1.")
    except BaseException:
        request.on_failure(ExceptionInfo())
    return outcome, request


def test_below_the_bound_it_is_requeued_then_dead_lettered_and_acked_at_it(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeRedis()
    failures: list[str] = []

    def on_failure(exception: BaseException | None = None, **_: Any) -> None:
        failures.append(f"{type(exception).__name__}: {exception}")

    signals.task_failure.connect(on_failure, weak=False)
    try:
        calls = [_lose_child(app, client)[0].calls for _ in range(3)]
    finally:
        signals.task_failure.disconnect(on_failure)
    assert calls == [["requeue"], ["requeue"], ["ack"]]
    letter = deadletter.DeadLetter(**json.loads(client.hashes[keys.DEADLETTER_KEY]["id-1"]))
    assert letter.requeueable and letter.queue == "default" and letter.task_name == "t.poison"
    assert "lost 3 times (last: signal 9 (SIGKILL)); not redelivered" in letter.reason
    assert json.loads(letter.raw)["headers"]["id"] == "id-1"  # the message as it sat in Redis
    assert "appliance:lost:id-1" not in client.values  # a requeue by an operator starts over
    assert failures == [letter.reason]  # the FAILURE record's error
    assert app.AsyncResult("id-1").state == "FAILURE"
    assert "requeued (1 of 3)" in caplog.text and "Traceback" not in caplog.text


def test_sys_exit_in_the_task_counts_as_a_lost_child(app: Celery) -> None:
    client = FakeRedis()
    outcome, _ = _lose_child(app, client, exc=SystemExit(3))
    assert outcome.calls == ["requeue"] and client.values["appliance:lost:id-1"] == 1


def test_without_redis_the_loss_is_requeued_as_stock_celery_does(app: Celery) -> None:
    client = FakeRedis()
    client.down = True
    for _ in range(5):
        assert _lose_child(app, client)[0].calls == ["requeue"]


def test_a_dead_letter_that_cannot_be_stored_is_requeued_not_dropped(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = FakeRedis()

    def refuse(*_: Any) -> None:
        raise redis.ResponseError("MISCONF Redis is configured to save RDB snapshots")

    monkeypatch.setattr(deadletter, "store", refuse)
    assert [_lose_child(app, client)[0].calls for _ in range(4)] == [["requeue"]] * 4


def test_a_revoked_or_terminated_child_is_not_counted(app: Celery) -> None:
    client = FakeRedis()
    outcome = _Outcome()
    task = app.tasks["t.poison"]
    request = worker_lost.Request(
        _Message("id-2", client), app=app, task=task, on_ack=outcome.ack, on_reject=outcome.reject
    )
    request._already_revoked = True
    try:
        raise SystemExit(-signal.SIGTERM)
    except SystemExit:
        request.on_failure(ExceptionInfo())
    assert client.values == {}


def test_zero_keeps_requeueing_forever(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_MAX_WORKER_LOST", "0")
    get_settings.cache_clear()
    client = FakeRedis()
    assert [_lose_child(app, client)[0].calls for _ in range(5)] == [["requeue"]] * 5


def test_other_failures_are_not_counted(app: Celery) -> None:
    client = FakeRedis()
    _lose_child(app, client, exc=ValueError("bad input"))
    assert client.values == {}
