"""What the consumers' parent does with the message of a consumer that ended mid-task: the
lost-child policy prefork uses (appliance/worker/lost.py), on a stand-in for Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from appliance.config.settings import get_settings
from appliance.core import keys
from appliance.worker.consumers import settle
from appliance.worker.consumers.children import ConsumerProcess, Running
from appliance.worker.consumers.protocol import KilledFor

TAG = "tag-1"


class _Pipe:
    def __init__(self, client: _Redis) -> None:
        self.client, self.ops = client, []  # type: _Redis, list[tuple[str, tuple[Any, ...]]]

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.ops.append((name, args))

    def execute(self) -> list[Any]:
        return [getattr(self.client, name)(*args) for name, args in self.ops]


class _Redis:
    """The commands settling a message uses; *down* lists the ones that fail."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.down: set[str] = set()

    def _check(self, command: str) -> None:
        if command in self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused.")

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self)

    def incr(self, key: str) -> int:
        self._check("incr")
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]

    def expire(self, key: str, seconds: int) -> bool:
        return True

    def delete(self, key: str) -> int:
        return 1 if self.values.pop(key, None) is not None else 0

    def hset(self, key: str, field: str, value: str) -> int:
        self._check("hset")
        self.hashes.setdefault(key, {})[field] = value
        return 1

    def hget(self, key: str, field: str) -> str | None:
        return self.hashes.get(key, {}).get(field)

    def hdel(self, key: str, field: str) -> int:
        return 1 if self.hashes.get(key, {}).pop(field, None) is not None else 0

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self.zsets.setdefault(key, {}).update(mapping)
        return len(mapping)

    def zrem(self, key: str, member: str) -> int:
        return 1 if self.zsets.get(key, {}).pop(member, None) is not None else 0


class _QoS:
    def __init__(self) -> None:
        self.restored: list[str] = []

    def restore_by_tag(self, tag: str) -> None:
        self.restored.append(tag)


class _Channel:
    unacked_key = "unacked"
    unacked_index_key = "unacked_index"

    def __init__(self) -> None:
        self.client = _Redis()
        self.qos = _QoS()
        self.failed: list[str] = []  # the FAILURE errors stored
        message = {"body": "e30=", "headers": {"id": "id-1"}, "properties": {}}
        self.client.hashes["unacked"] = {TAG: json.dumps([message, "", "default"])}
        self.client.zsets["unacked_index"] = {TAG: 1.0}

    @property
    def acked(self) -> bool:
        return TAG not in self.client.hashes["unacked"]


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Channel]:
    monkeypatch.setenv("APPLIANCE_RECORDS_ENABLED", "false")
    get_settings.cache_clear()
    channel = _Channel()

    @contextmanager
    def connect() -> Iterator[_Channel]:
        yield channel

    monkeypatch.setattr(settle, "_channel", connect)
    monkeypatch.setattr(settle, "_success_stored", lambda task_id: False)
    monkeypatch.setattr(
        settle, "_fail", lambda task_id, name, exc, error: channel.failed.append(error)
    )
    yield channel
    get_settings.cache_clear()


def _lose(channel: _Channel) -> None:
    settle.consumer_lost(TAG, "id-1", "t.poison", "signal 9 (SIGKILL)")


def test_a_lost_consumers_task_is_requeued_then_dead_lettered_at_the_bound(
    channel: _Channel, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        _lose(channel)
    assert channel.qos.restored == [TAG, TAG] and not channel.acked
    assert "requeued (2 of 3)" in caplog.text
    _lose(channel)
    assert channel.qos.restored == [TAG, TAG] and channel.acked  # not redelivered
    letter = json.loads(channel.client.hashes[keys.DEADLETTER_KEY]["id-1"])
    assert "lost 3 times (last: signal 9 (SIGKILL)); not redelivered" in letter["reason"]
    assert letter["queue"] == "default" and letter["requeueable"]
    assert channel.failed == [letter["reason"]]
    assert "appliance:lost:id-1" not in channel.client.values  # an operator's requeue starts over


def test_a_task_that_stored_success_before_its_consumer_died_is_acked_not_counted(
    channel: _Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settle, "_success_stored", lambda task_id: True)
    _lose(channel)
    assert channel.acked and channel.qos.restored == [] and channel.client.values == {}


def test_a_loss_redis_cannot_count_is_requeued(channel: _Channel) -> None:
    channel.client.down.add("incr")
    for _ in range(5):
        _lose(channel)
    assert channel.qos.restored == [TAG] * 5 and not channel.acked


def test_a_dead_letter_that_cannot_be_stored_is_requeued_not_dropped(channel: _Channel) -> None:
    channel.client.down.add("hset")
    for _ in range(4):
        _lose(channel)
    assert channel.qos.restored == [TAG] * 4 and not channel.acked


@pytest.mark.parametrize(
    ("killed_for", "code", "expected"),
    [
        (KilledFor.TIME_LIMIT, -9, ["time limit tag-1", "requeue held-1"]),
        (KilledFor.REVOKED, -9, ["revoked tag-1", "requeue held-1"]),
        (KilledFor.STOP, -9, ["requeue tag-1", "requeue held-1"]),
        (None, -9, ["lost tag-1 signal 9 (SIGKILL)", "requeue held-1"]),
        (None, 3, ["lost tag-1 exitcode 3"]),  # it exited itself: it restored what it held
    ],
)
def test_a_consumers_message_is_settled_by_why_it_ended(
    monkeypatch: pytest.MonkeyPatch, killed_for: KilledFor | None, code: int, expected: list[str]
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        settle, "hard_time_limit_exceeded", lambda tag, *_: calls.append(f"time limit {tag}")
    )
    monkeypatch.setattr(settle, "terminated", lambda tag, *_: calls.append(f"revoked {tag}"))
    monkeypatch.setattr(settle, "requeue", lambda tag, why: calls.append(f"requeue {tag}"))
    monkeypatch.setattr(
        settle, "consumer_lost", lambda tag, _id, _name, how: calls.append(f"lost {tag} {how}")
    )
    consumer = ConsumerProcess(0, 1000, -1, forked_at=0.0, held="held-1", killed_for=killed_for)
    consumer.running = Running(TAG, 10.0, "id-1", "t.slow", since=0.0)
    how = "signal 9 (SIGKILL)" if code < 0 else f"exitcode {code}"
    settle.settle_exit(consumer, code, how)
    assert calls == expected
