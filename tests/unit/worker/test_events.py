"""The consumers topology's event heartbeat: Celery's Heart moved off the event loop.

A consumer process runs its tasks in its event loop's thread; the step makes Celery's own
Heart (real, with a recording dispatcher) beat from a thread instead, and keeps a retiring
consumer from announcing worker-offline for a node its successor carries on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.heartbeat import Heart
from kombu.asynchronous.timer import Timer

from appliance.worker import events
from appliance.worker.consumers import pool
from appliance.worker.repeat import Repeating
from tests.helpers.processes import wait_until


class Dispatcher:
    """What Heart asks of an event dispatcher; records every event and its thread."""

    def __init__(self) -> None:
        self.enabled = True
        self.on_enabled: set[Any] = set()
        self.on_disabled: set[Any] = set()
        self.sent: list[tuple[str, str]] = []

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, threading.current_thread().name))

    def types(self) -> list[str]:
        return [t for t, _ in self.sent]


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A consumer process's consumer with Celery's Heart started on a loop timer that never
    runs (the loop is busy with a long task)."""
    monkeypatch.setattr(
        events.consumer_process, "current", lambda: SimpleNamespace(is_consumer=True)
    )
    heart = Heart(Timer(), Dispatcher(), interval=0.05)
    heart.start()
    found = SimpleNamespace(heart=heart)
    yield found
    if found.heart is not None and found.heart.tref is not None:
        found.heart.timer.cancel(found.heart.tref)


def test_a_consumer_beats_from_a_thread_while_its_loop_is_busy(consumer: SimpleNamespace) -> None:
    heart, loop_tref = consumer.heart, consumer.heart.tref
    events.ConsumerHeartStep(consumer).start(consumer)
    assert loop_tref.canceled  # nothing left on the loop's timer
    wait_until(lambda: heart.eventer.types().count("worker-heartbeat") >= 3, 10, "heartbeats")
    assert heart.eventer.sent[0][0] == "worker-online"
    assert {name for t, name in heart.eventer.sent if t == "worker-heartbeat"} == {
        "event-heartbeat"
    }
    heart.stop()  # what Celery's Heart step does at a stop: the thread ends, offline is sent
    assert heart.eventer.types()[-1] == "worker-offline"
    beats = len(heart.eventer.sent)
    time.sleep(0.2)
    assert len(heart.eventer.sent) == beats


def test_events_re_enabled_at_run_time_beat_from_a_thread_again(consumer: SimpleNamespace) -> None:
    heart = consumer.heart
    events.ConsumerHeartStep(consumer).start(consumer)
    heart.stop()
    heart.start()  # the dispatcher's on_enabled callback
    assert isinstance(heart.tref, Repeating)
    before = heart.eventer.types().count("worker-heartbeat")
    wait_until(lambda: heart.eventer.types().count("worker-heartbeat") > before, 10, "a heartbeat")


def test_a_retiring_consumer_leaves_its_node_online(
    consumer: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    heart = consumer.heart
    step = events.ConsumerHeartStep(consumer)
    step.start(consumer)
    monkeypatch.setattr(pool, "retiring", lambda: True)
    step.shutdown(consumer)
    assert consumer.heart is None  # Celery's Heart step then has nothing to stop
    assert "worker-offline" not in heart.eventer.types()
    beats = len(heart.eventer.sent)
    time.sleep(0.2)
    assert len(heart.eventer.sent) == beats


def test_a_consumer_that_stops_for_good_says_offline(consumer: SimpleNamespace) -> None:
    step = events.ConsumerHeartStep(consumer)
    step.start(consumer)
    step.shutdown(consumer)  # not retiring: Celery's Heart step stops it as usual
    assert consumer.heart is not None
    consumer.heart.stop()
    assert consumer.heart.eventer.types()[-1] == "worker-offline"


def test_outside_a_consumer_process_the_heart_stays_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        events.consumer_process, "current", lambda: SimpleNamespace(is_consumer=False)
    )
    loop = Timer()
    heart = Heart(loop, Dispatcher(), interval=0.05)
    heart.start()
    consumer = SimpleNamespace(heart=heart)
    events.ConsumerHeartStep(consumer).start(consumer)
    assert heart.timer is loop and not heart.tref.canceled
    heart.timer.cancel(heart.tref)
