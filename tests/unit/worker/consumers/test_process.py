"""The consumer-process state: the default a non-consumer sees, what a task's ack carries,
and the one place a consumer's state is made after its fork."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.broker import transport
from appliance.config.settings import load_settings
from appliance.records import signals as record_signals
from appliance.worker import supervision as worker_step
from appliance.worker.consumers import process as consumer_process
from appliance.worker.consumers.process import ConsumerLimits, ConsumerProcessState
from appliance.worker.consumers.protocol import CONSUMER_PING_SECONDS, LinkNotifier
from appliance.worker.launch import consumer_state


@pytest.fixture
def as_consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConsumerProcessState]:
    """This process as a consumer whose acks carry results and records, until the test ends."""
    monkeypatch.setattr(consumer_process, "_state", consumer_process.current())
    state = ConsumerProcessState(
        is_consumer=True, results_with_ack=(1, 0), records_journal="journal-key"
    )
    consumer_process.become_consumer(state)
    yield state


def test_a_process_that_is_not_a_consumer_writes_everything_itself() -> None:
    state = consumer_process.current()
    assert not state.is_consumer and state.link is None and state.supervision is None
    state.task_begins("id-1")
    try:
        assert not state.stash_result("id-1", "key", "value", 0, lambda: None)
        assert not state.stash_record("id-1", "{}", lambda: None)
    finally:
        state.task_ends()
    assert worker_step.current() is worker_step.supervision


def test_the_running_tasks_final_writes_wait_for_its_ack(
    as_consumer: ConsumerProcessState,
) -> None:
    written: list[str] = []
    as_consumer.task_begins("id-1")
    assert not as_consumer.stash_result("other", "k", "v", 0, lambda: written.append("other"))
    assert as_consumer.stash_result("id-1", "k", "v", 60, lambda: written.append("result"))
    assert as_consumer.stash_record("id-1", "{}", lambda: written.append("record"))
    assert written == []
    carried = as_consumer.ack.take_carried()
    assert carried.result == ("k", "v", 60) and carried.record == "{}"
    args = transport._script_args(carried, as_consumer)
    assert args == ["k", "v", 60, 1, 0, "journal-key", "{}", transport.RECORDS_JOURNAL_CAP]
    assert as_consumer.ack.carried.result is None  # the next ack carries nothing of it


def test_what_no_ack_carried_is_written_when_the_task_ends(
    as_consumer: ConsumerProcessState,
) -> None:
    written: list[str] = []
    as_consumer.task_begins("id-1")
    as_consumer.stash_result("id-1", "k", "v1", 0, lambda: written.append("first"))
    as_consumer.stash_result("id-1", "k", "v2", 0, lambda: written.append("second"))
    assert written == ["first"]  # an earlier final state goes first
    as_consumer.stash_record("id-1", "{}", lambda: written.append("record"))
    as_consumer.task_ends()
    assert written == ["first", "second", "record"] and as_consumer.ack.task_id is None
    assert not as_consumer.stash_result("id-1", "k", "v", 0, lambda: None)


def test_a_consumers_final_record_write_rides_with_the_ack(
    as_consumer: ConsumerProcessState,
) -> None:
    writes: list[str] = []

    def record_succeeded(url: str, **kwargs: object) -> None:
        writes.append(str(kwargs["task_id"]))

    as_consumer.task_begins("id-1")
    record_signals._final_write("sqlite://", record_succeeded, True, task_id="id-1", name="n")
    assert as_consumer.ack.carried.record is not None and writes == []
    record_signals._final_write("sqlite://", record_succeeded, True, task_id="id-2", name="n")
    assert writes == ["id-2"]  # not the running task's: written at once
    as_consumer.task_ends()
    assert writes == ["id-2", "id-1"]


def test_a_non_consumer_writes_its_final_record_at_once() -> None:
    writes: list[str] = []

    def record_succeeded(url: str, **kwargs: object) -> None:
        writes.append(str(kwargs["task_id"]))

    record_signals._final_write("sqlite://", record_succeeded, True, task_id="id-1", name="n")
    assert writes == ["id-1"]


def test_a_consumers_state_is_made_in_one_place_after_its_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_BROKER_URL", "redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setenv("APPLIANCE_RESULT_BACKEND", "redis://:pw@127.0.0.1:6379/1")
    settings = load_settings()
    unit = worker_step.Supervision(group="default", queues=["default"], watchdog=30.0)
    state = consumer_state(settings, unit, ConsumerLimits(100, 0), "journal-key", 7, -1, 3)
    assert state.is_consumer and state.link is not None and state.consumers == 3
    assert state.limits == ConsumerLimits(100, 0) and state.records_journal == "journal-key"
    assert state.supervision is not None and state.supervision.queues == ["default"]
    assert isinstance(state.supervision.notifier, LinkNotifier)  # reports to the parent
    assert state.supervision.watchdog == CONSUMER_PING_SECONDS
    assert unit.watchdog == 30.0  # the unit's own is untouched
    assert state.results_with_ack == (1, 0)  # the result backend is on the broker's server


def test_a_consumers_supervision_step_uses_its_own_supervision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_process, "_state", consumer_process.current())
    own = worker_step.Supervision(group="mine")
    consumer_process.become_consumer(ConsumerProcessState(is_consumer=True, supervision=own))
    assert worker_step.current() is own
