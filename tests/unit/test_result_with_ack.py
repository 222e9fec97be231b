"""result_with_ack: when the ack may store a task's result, and how it travels there."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from billiard.pool import ACK, READY

from appliance import result_with_ack as rwa


@pytest.fixture(autouse=True)
def _forget_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rwa, "_target", None)
    monkeypatch.setattr(rwa, "_main_pid", None)
    monkeypatch.setattr(rwa, "_stash", None)


def _app(broker: str, backend: str, prefix: str | None = None) -> Any:
    options = {"global_keyprefix": prefix} if prefix else {}
    conf = SimpleNamespace(
        broker_url=broker,
        result_backend=backend,
        broker_transport_options=options,
        result_backend_transport_options={},
        result_expires=86400,
    )
    return SimpleNamespace(conf=conf)


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:pw@127.0.0.1:6379/1", (1, 0)),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/2", (2, 0)),
        (  # TLS: the same parameters on both
            "rediss://h:6380/0?ssl_cert_reqs=required",
            "rediss://h:6380/1?ssl_cert_reqs=required",
            (1, 0),
        ),
        # Another server, another user or password, Sentinel: the child stores, as stock.
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/1", None),
        ("redis://:a@127.0.0.1:6379/0", "redis://:b@127.0.0.1:6379/1", None),
        ("sentinel://127.0.0.1:26379/0", "sentinel://127.0.0.1:26379/1", None),
    ],
)
def test_the_ack_stores_results_only_on_the_brokers_own_server(
    broker: str, backend: str, expected: tuple[int, int] | None
) -> None:
    target = rwa.enable(_app(broker, backend))
    assert (None if target is None else (target.backend_db, target.broker_db)) == expected
    if target is not None:
        assert target.expires == 86400


def test_a_key_prefix_turns_it_off() -> None:
    assert rwa.enable(_app("redis://h/0", "redis://h/1", prefix="app:")) is None


def _ready(outcome: Any) -> Any:
    return (READY, ("job", 0, (True, outcome), 7))


def test_a_child_hands_its_success_over_and_stores_anything_else_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rwa.enable(_app("redis://h/0", "redis://h/1"))
    monkeypatch.setattr(rwa, "_main_pid", -1)  # this process plays a pool child
    request = SimpleNamespace(id="t1", chord=None)
    stored: list[tuple[str, str]] = []

    assert not rwa.defer("t1", "FAILURE", request, "k", "v")  # only a SUCCESS
    assert not rwa.defer("other", "SUCCESS", request, "k", "v")  # of the running task
    assert not rwa.defer("t1", "SUCCESS", SimpleNamespace(id="t1", chord={"x": 1}), "k", "v")
    assert rwa.defer("t1", "SUCCESS", request, "k1", "v1")
    kind, (_, _, (ok, (failed, deferred, runtime)), _) = rwa.attach(
        _ready((0, "'repr'", 0.5)), lambda *kv: stored.append(kv)
    )
    assert (kind, ok, failed, runtime) == (READY, True, 0, 0.5)
    assert deferred == rwa.DeferredResult("'repr'", "k1", "v1") and stored == []

    # Kept, but the outcome turned out to be something else: stored on the spot.
    assert rwa.defer("t1", "SUCCESS", request, "k2", "v2")
    assert rwa.attach(_ready((1, "boom", 0.1)), lambda *kv: stored.append(kv))[0] == READY
    assert stored == [("k2", "v2")]
    # Nothing kept: messages pass untouched.
    message = (ACK, ("job", 0, 1.0, 123, None))
    assert rwa.attach(message, lambda *kv: stored.append(kv)) is message


def test_the_main_process_gives_the_result_to_the_ack_or_stores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored: list[tuple[str, str]] = []
    handed: dict[str, tuple[str, str]] = {}

    class Request:
        def __init__(self, acks_late: bool) -> None:
            self.acks_late = acks_late
            self.seen: Any = None

        def on_success(self, outcome: Any) -> None:
            self.seen = outcome
            if self.acks_late:  # what Celery's on_success does, then acknowledge()
                handed["t"] = self.__dict__.pop("result_for_ack")

    late = Request(acks_late=True)
    rwa.wrap_callback(late.on_success, lambda *kv: stored.append(kv))(
        (0, rwa.DeferredResult("'r'", "k", "v"), 0.2)
    )
    assert late.seen == (0, "'r'", 0.2) and handed == {"t": ("k", "v")} and stored == []

    early = Request(acks_late=False)  # acked when received: no ack carries the result
    rwa.wrap_callback(early.on_success, lambda *kv: stored.append(kv))(
        (0, rwa.DeferredResult("'r'", "k", "v"), 0.2)
    )
    assert early.seen == (0, "'r'", 0.2) and stored == [("k", "v")]
