"""A consumer's mailbox thread (appliance/worker/consumers/mailbox.py) and the remote-control
commands both topologies answer differently (appliance/worker/remote_control.py).

The thread runs here for real against kombu's in-memory transport, with a stand-in for the
consumer; a real consumers unit answering while its tasks run is
tests/integration/worker/test_remote_control.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import WorkerShutdown
from celery.worker import state as worker_state
from celery.worker.control import Panel

from appliance.worker import consumer as worker_consumer
from appliance.worker import lost as worker_lost
from appliance.worker import remote_control
from appliance.worker.consumers import kills, mailbox
from appliance.worker.consumers import process as consumer_process
from appliance.worker.consumers.pool import TaskPool, shared_rate
from appliance.worker.consumers.process import ConsumerProcessState
from appliance.worker.consumers.protocol import ParentLink
from tests.helpers.processes import wait_until


@pytest.fixture
def as_consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConsumerProcessState]:
    monkeypatch.setattr(consumer_process, "_state", consumer_process.current())
    state = ConsumerProcessState(is_consumer=True)
    consumer_process.become_consumer(state)
    yield state


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """worker_state's requests and revoked set, empty, restored after the test."""
    held: dict[str, Any] = {}
    monkeypatch.setattr(worker_state, "requests", held)
    saved = set(worker_state.revoked)
    worker_state.revoked.clear()
    yield held
    worker_state.revoked.clear()
    worker_state.revoked.update(saved)


class _Backend:
    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.marked: list[str] = []

    def get_state(self, task_id: str) -> str:
        return self.states.get(task_id, "PENDING")

    def mark_as_revoked(self, task_id: str, reason: str = "", store_result: bool = True) -> None:
        self.marked.append(task_id)


class _Request:
    """What revoke reads of a Request: its id, claim, backend; terminate is recorded."""

    def __init__(self, task_id: str, backend: _Backend, claimed: bool) -> None:
        self.id, self.claimed = task_id, claimed
        self.task = SimpleNamespace(backend=backend)
        self.terminated: list[Any] = []

    def terminate(self, pool: Any, signal: Any = None) -> None:
        self.terminated.append((pool, signal))


def _state(pool: Any = None) -> Any:
    return SimpleNamespace(consumer=SimpleNamespace(pool=pool))


# --- revoke: a consumer marks REVOKED only what it holds and has not started ---------


def test_a_task_run_elsewhere_is_not_marked_revoked_here(requests: dict[str, Any]) -> None:
    backend = _Backend({})
    requests["mine"] = _Request("mine", backend, claimed=False)  # reserved here, not started
    requests["running"] = _Request("running", backend, claimed=True)
    reply = mailbox.revoke(_state(), ["mine", "running", "elsewhere"])
    assert reply == {"ok": f"tasks {set(['mine', 'running', 'elsewhere'])} flagged as revoked"}
    assert backend.marked == ["mine"]  # not the running one, not the one a sibling may run
    assert {"mine", "running", "elsewhere"} <= set(worker_state.revoked)


def test_an_unstarted_request_with_a_final_or_started_state_is_left_alone(
    requests: dict[str, Any],
) -> None:
    backend = _Backend({"done": "SUCCESS", "started": "STARTED", "retry": "RETRY"})
    for task_id in ("done", "started", "retry"):
        requests[task_id] = _Request(task_id, backend, claimed=False)
    mailbox.revoke(_state(), ["done", "started", "retry"])
    assert backend.marked == ["retry"]  # as Celery's revoke decides


def test_terminate_goes_to_the_requests_held_here(requests: dict[str, Any]) -> None:
    pool, backend = object(), _Backend({})
    running = requests["running"] = _Request("running", backend, claimed=True)
    assert mailbox.revoke(_state(pool), "running", terminate=True, signal="KILL") == {
        "ok": "terminate: running"
    }
    assert running.terminated == [(pool, signal.SIGKILL)] and backend.marked == []
    assert mailbox.terminate(_state(pool), "TERM", ["elsewhere"]) == {
        "ok": "terminate: tasks unknown"
    }


def test_a_terminate_request_that_cannot_be_written_answers_an_error(
    requests: dict[str, Any],
) -> None:
    def refuse(pool: Any, signal: Any = None) -> None:
        raise ConnectionError("Redis is down")

    request = requests["running"] = _Request("running", _Backend({}), claimed=True)
    request.terminate = refuse  # type: ignore[method-assign]
    reply = mailbox.revoke(_state(), "running", terminate=True)
    assert reply == {"error": "terminate of running not requested: ConnectionError: Redis is down"}


# --- the Request: claimed on its way to the pool; terminate asks the parent ---------


@pytest.fixture
def app() -> Celery:
    app = Celery("unit", set_as_current=False, backend="cache+memory://")

    @app.task(name="t.long", shared=False)
    def long() -> None:  # pragma: no cover - never runs here
        pass

    return app


def _request(app: Celery, task_id: str = "id-1") -> worker_lost.Request:
    from kombu import Message

    message = Message(
        body=b"[[], {}, {}]",
        headers={"id": task_id, "task": "t.long"},
        content_type="application/json",
        content_encoding="utf-8",
        properties={"delivery_tag": "tag-1"},
    )
    return worker_lost.Request(message, app=app, task=app.tasks["t.long"])


def test_a_request_is_claimed_by_the_check_on_its_way_to_the_pool(
    app: Celery, requests: dict[str, Any]
) -> None:
    request = _request(app)
    assert not request.revoked() and not request.claimed  # the strategy's check: not reserved
    requests[request.id] = request  # task_reserved
    assert not request.revoked() and request.claimed


def test_a_revoke_before_the_claim_stops_the_request(app: Celery, requests: dict[str, Any]) -> None:
    request = requests["id-1"] = _request(app)
    mailbox.revoke(_state(), "id-1")
    assert request.revoked()  # discarded on its way to the pool: REVOKED there, consistently
    assert app.AsyncResult("id-1").state == "REVOKED"


class _Pool:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def terminate_task(self, task_id: str) -> None:
        self.asked.append(task_id)


def test_terminate_in_a_consumer_asks_its_parent(
    app: Celery, as_consumer: ConsumerProcessState
) -> None:
    pool, request = _Pool(), _request(app, "id-terminated")
    request.terminate(pool, signal.SIGTERM)
    assert pool.asked == [] and request._terminate_on_ack == (pool, signal.SIGTERM)
    request.time_start = 1.0  # accepted: running
    request.terminate(pool, signal.SIGTERM)
    assert pool.asked == ["id-terminated"]
    # The parent stores REVOKED once it killed the consumer, not this thread.
    assert app.AsyncResult("id-terminated").state == "PENDING"


def test_terminate_elsewhere_is_celerys(app: Celery) -> None:
    calls: list[Any] = []
    pool = SimpleNamespace(terminate_job=lambda pid, signum: calls.append((pid, signum)))
    request = _request(app, "id-prefork")
    request.worker_pid, request.time_start = 4711, 1.0
    request.terminate(pool, signal.SIGKILL)
    assert calls == [(4711, signal.SIGKILL)]
    assert app.AsyncResult("id-prefork").state == "REVOKED"


def test_the_pool_writes_the_terminate_request_the_parent_reads(
    as_consumer: ConsumerProcessState, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[list[str]] = []
    monkeypatch.setattr(kills, "request_terminate", lambda client, ids: written.append(ids))
    pool = TaskPool.__new__(TaskPool)
    pool.process_state, pool._redis = as_consumer, object()
    pool.terminate_job(os.getpid(), signal.SIGTERM)  # no task running: nothing
    as_consumer.task_begins("id-9")
    pool.terminate_job(os.getpid() + 1, signal.SIGTERM)  # not this process
    pool.terminate_job(os.getpid(), signal.SIGTERM)
    assert written == [["id-9"]]


class _Pipeline:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.ops.append(("zadd", key, mapping))

    def zremrangebyscore(self, key: str, low: float, high: float) -> None:
        self.ops.append(("zremrangebyscore", key, low, high))

    def execute(self) -> None:
        self.ops.append(("execute",))


def test_a_terminate_request_is_one_transaction_that_trims_old_ones() -> None:
    pipe = _Pipeline()
    kills.request_terminate(SimpleNamespace(pipeline=lambda transaction: pipe), ["a"], now=1e6)
    assert pipe.ops == [
        ("zadd", "appliance:terminate", {"a": 1e6}),
        ("zremrangebyscore", "appliance:terminate", 0, 1e6 - 24 * 3600),
        ("execute",),
    ]


# --- commands in the thread -----------------------------------------------------------


def test_a_command_that_meets_a_changing_set_runs_again_and_its_reply_is_a_copy() -> None:
    live = Counter(a=1)
    tries: list[int] = []

    def stats(state: Any) -> Any:
        tries.append(1)
        if len(tries) < 3:
            raise RuntimeError("Set changed size during iteration")
        return {"total": live}

    reply = mailbox.in_thread("stats", stats)(None)
    assert len(tries) == 3 and reply == {"total": {"a": 1}}
    live["b"] = 2
    assert reply == {"total": {"a": 1}}  # detached from the live counter


def test_a_command_that_would_stop_the_worker_stops_the_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: killed.append((pid, signum)))

    def custom(state: Any) -> None:
        raise WorkerShutdown(0)

    assert mailbox.in_thread("custom", custom)(None) is None
    assert mailbox.in_thread("shutdown", mailbox.shutdown)(None)["ok"].startswith("the unit")
    assert killed == [(os.getppid(), signal.SIGTERM)] * 2


def test_rate_limit_resets_the_buckets_on_the_loop() -> None:
    soon: list[Any] = []
    consumer = SimpleNamespace(
        call_soon=lambda fun, *args: soon.append(fun), reset_rate_limits=lambda: None, pool="p"
    )
    seen = mailbox.LoopConsumer(consumer)
    seen.reset_rate_limits()
    assert soon == [consumer.reset_rate_limits] and seen.pool == "p"


@pytest.mark.parametrize(
    ("limit", "consumers", "share"),
    [("10/s", 4, "2.5/s"), ("60/m", 2, "0.5/s"), ("10/s", 1, "10/s"), ("0", 4, "0"),
     (None, 4, None), ("soon", 4, "soon")],
)  # fmt: skip
def test_a_consumer_keeps_its_share_of_a_rate_limit(limit: Any, consumers: int, share: Any) -> None:
    assert shared_rate(limit, consumers) == share


def test_rate_limit_sets_the_consumers_share(
    monkeypatch: pytest.MonkeyPatch, as_consumer: ConsumerProcessState
) -> None:
    consumer_process.become_consumer(dataclasses.replace(as_consumer, consumers=4))
    task = SimpleNamespace(rate_limit=None)
    soon: list[Any] = []
    consumer = SimpleNamespace(call_soon=soon.append, reset_rate_limits=lambda: None)
    state = SimpleNamespace(app=SimpleNamespace(tasks={"t.x": task}),
                            consumer=mailbox.LoopConsumer(consumer))  # fmt: skip
    commands = remote_control.commands(consumer=True)
    assert commands["rate_limit"](state, task_name="t.x", rate_limit="8/s")["ok"]
    assert task.rate_limit == "2.0/s" and soon == [consumer.reset_rate_limits]
    assert (
        "Invalid rate limit"
        in commands["rate_limit"](state, task_name="t.x", rate_limit="soon")["error"]
    )


@pytest.mark.parametrize("name", ["pool_grow", "pool_shrink", "autoscale"])
def test_a_consumer_cannot_grow_or_autoscale_and_says_why(name: str) -> None:
    reply = remote_control.commands(consumer=True)[name](_state(), n=1)
    assert reply == {"error": remote_control.FIXED_CONSUMERS}
    assert "APPLIANCE_CONCURRENCY" in reply["error"] and "\n" not in reply["error"]


def test_prefork_autoscale_without_an_autoscaler_says_why() -> None:
    state = SimpleNamespace(consumer=SimpleNamespace(controller=SimpleNamespace(autoscaler=None)))
    reply = remote_control.commands(consumer=False)["autoscale"](state, max=4)
    assert reply == {"error": remote_control.NO_AUTOSCALE}


def test_prefork_grows_its_pool_as_celery_does() -> None:
    commands = remote_control.commands(consumer=False)
    assert commands["pool_grow"] is Panel.data["pool_grow"]
    assert commands["revoke"] is Panel.data["revoke"]


def test_every_other_command_is_celerys_and_an_unknown_one_is_a_key_error() -> None:
    commands = remote_control.commands(consumer=True)
    assert commands["ping"](None) == {"ok": "pong"}
    assert commands["revoke"].__name__ == "revoke"
    with pytest.raises(KeyError):
        commands["no_such_command"]


def test_the_consumer_blueprint_runs_the_appliances_control_step() -> None:
    steps = worker_consumer.Consumer.Blueprint.default_steps
    assert worker_consumer.CONTROL_STEP in steps
    assert worker_consumer.CELERY_CONTROL_STEP not in steps
    assert len(steps) == len(worker_consumer.CeleryConsumer.Blueprint.default_steps)


def test_a_successor_held_at_its_gate_has_not_passed_it_yet() -> None:
    assert ParentLink(1).passed.is_set()
    read_fd, write_fd = os.pipe()
    link = ParentLink(1, read_fd)
    assert not link.passed.is_set()
    os.close(write_fd)
    link.wait_at_gate()
    assert link.passed.is_set()


# --- the thread, for real, on kombu's in-memory transport --------------------------------


def test_the_mailbox_thread_answers_with_no_event_loop_turning(
    as_consumer: ConsumerProcessState,
) -> None:
    app = Celery("unit-mailbox", set_as_current=False, broker="memory://")
    app.conf.broker_transport_options = {"polling_interval": 0.01}  # memory's default: 1 s
    node = "default.0@unit"
    consumer = SimpleNamespace(  # nothing here turns an event loop: the thread answers alone
        app=app, hostname=node, controller=SimpleNamespace(use_eventloop=True), pool=None
    )
    box = mailbox.ThreadedMailbox(consumer, remote_control.commands(consumer=True))
    box.start(consumer)
    try:
        ping = app.control.inspect(destination=[node], timeout=1, limit=1).ping
        # The thread subscribes just after it starts.
        assert wait_until(ping, 10, "a pong") == {node: {"ok": "pong"}}
        grow = app.control.pool_grow(destination=[node], reply=True, timeout=5, limit=1)
        assert grow == [{node: {"error": remote_control.FIXED_CONSUMERS}}]
        box.stop(consumer)  # a restart of the consumer's own connection: it goes on
        assert app.control.ping(destination=[node], timeout=5, limit=1)
    finally:
        box.shutdown(consumer)
        assert box._thread is not None
        box._thread.join(5)
        app.close()
    assert not box._thread.is_alive()
