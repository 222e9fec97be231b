"""The consumers topology without servers: arguments, reports, health and exit decisions.

The real forks, kills and Redis work run in tests/integration (faults/test_pool.py on
both topologies, worker/test_consumers.py).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from appliance.broker.result_backend import databases_on_one_server
from appliance.config.settings import load_settings
from appliance.worker.consumers.children import (
    CONSUMER_SILENT_SECONDS,
    CONSUMER_START_SECONDS,
    ConsumerProcess,
    exit_status,
)
from appliance.worker.consumers.process import ConsumerLimits
from appliance.worker.consumers.supervisor import Supervisor
from appliance.worker.launch import WorkerOptions, worker_argv
from appliance.worker.recycling import EX_RECYCLE


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


class _Notifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str | None = None) -> bool:
        self.sent.append("READY")
        return True

    def watchdog(self) -> bool:
        self.sent.append("WATCHDOG")
        return True

    def status(self, text: str) -> bool:
        return True

    def stopping(self, status: str | None = None, extend_usec: int | None = None) -> bool:
        self.sent.append("STOPPING")
        return True


def _supervisor(count: int = 2, watchdog: float | None = 1.0) -> Supervisor:
    return Supervisor(
        count=count,
        run_consumer=lambda index, fd, gate: 0,
        stop_timeout=10,
        notifier=_Notifier(),
        watchdog=watchdog,
    )


def _consumer(sup: Supervisor, index: int, now: float, ready: bool = True) -> ConsumerProcess:
    consumer = ConsumerProcess(index, 1000 + index, -1, forked_at=now, ready=ready, last_report=now)
    sup.consumers[consumer.pid] = consumer
    return consumer


def _record_forks(sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The indexes *sup* forks a consumer for, instead of forking."""
    forked: list[int] = []
    monkeypatch.setattr(sup, "_fork", lambda index, gated=False: forked.append(index))
    return forked


def test_a_consumer_runs_one_task_at_a_time_under_its_own_node_name() -> None:
    settings = load_settings()
    argv = worker_argv(settings, WorkerOptions(group="default", concurrency=4), consumer=2)
    assert _opt(argv, "--hostname") == "default.2@%h"
    assert _opt(argv, "--concurrency") == "1"
    assert _opt(argv, "--pool") == "custom"
    assert "--max-tasks-per-child" not in argv  # recycling is the consumer pool's own


def test_reports_track_the_running_task_and_the_message_an_ack_fetched() -> None:
    sup = _supervisor()
    consumer = _consumer(sup, 0, 100.0)
    sup._report(consumer, "S tag-1 360 id-1 demo.sleep for a while")
    assert consumer.running is not None
    assert (consumer.running.tag, consumer.running.hard_limit) == ("tag-1", 360.0)
    assert consumer.running.name == "demo.sleep for a while"
    sup._report(consumer, "E tag-2")
    assert consumer.running is None and consumer.held == "tag-2" and consumer.done == 1
    sup._report(consumer, "S tag-2 0 id-2 demo.noop")
    assert consumer.held is None  # the fetched message is the running one now
    sup._report(consumer, "E -")
    assert consumer.held is None


def test_a_consumer_is_healthy_in_a_task_within_its_limit_or_while_it_reports() -> None:
    sup = _supervisor()
    busy = _consumer(sup, 0, 0.0)
    sup._report(busy, "S t 60 id n")
    busy.running.since = 0.0  # type: ignore[union-attr]
    assert busy.healthy(60.0)  # a long task blocks its loop: not a stuck consumer
    assert not busy.healthy(60.0 + CONSUMER_SILENT_SECONDS + 1)
    idle = _consumer(sup, 1, 0.0)
    assert idle.healthy(CONSUMER_SILENT_SECONDS - 1)
    assert not idle.healthy(CONSUMER_SILENT_SECONDS + 1)
    starting = _consumer(sup, 2, 0.0, ready=False)
    assert starting.healthy(CONSUMER_START_SECONDS - 1)
    assert not starting.healthy(CONSUMER_START_SECONDS + 1)


def test_watchdog_pings_only_while_every_consumer_is_healthy() -> None:
    sup = _supervisor(count=2)
    first, second = _consumer(sup, 0, 0.0), _consumer(sup, 1, 0.0)
    sup._supervise(1.0)
    assert sup.notifier.sent == ["READY", "WATCHDOG"]
    first.last_report = second.last_report = 100.0
    sup._supervise(100.5)
    assert sup.notifier.sent[-1] == "WATCHDOG"
    second.last_report = 0.0  # silent, in no task
    sent = len(sup.notifier.sent)
    sup._supervise(102.0)
    assert len(sup.notifier.sent) == sent  # withheld


def test_a_unit_short_of_a_consumer_gets_no_watchdog_ping() -> None:
    sup = _supervisor(count=2)
    _consumer(sup, 0, 0.0)
    sup.unit.told_ready = True
    sup._supervise(1.0)
    assert "WATCHDOG" not in sup.notifier.sent


def test_a_consumer_that_never_starts_is_retried_with_a_pause_then_the_unit_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = _supervisor(count=1)
    forked = _record_forks(sup, monkeypatch)
    stopped: list[int] = []
    monkeypatch.setattr(sup, "_stop", lambda signum: stopped.append(signum))
    for attempt in range(5):
        consumer = ConsumerProcess(0, 2000 + attempt, -1, forked_at=0.0)
        sup._exited(consumer, 78 << 8)  # exit code 78, before consuming
    assert forked == []  # never at once: after a pause
    assert 0 in sup.respawns.due
    assert stopped == [signal.SIGTERM] and sup.respawns.last_code == 78
    assert sup.respawns.exit_code() == 78


def test_a_recycled_or_working_consumer_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = _supervisor(count=1)
    forked = _record_forks(sup, monkeypatch)
    sup._exited(ConsumerProcess(0, 1, -1, forked_at=0.0, ready=True), EX_RECYCLE << 8)
    worked = ConsumerProcess(0, 2, -1, forked_at=0.0, ready=True, done=5)
    sup._exited(worked, 1 << 8)
    assert forked == [0, 0] and not sup.respawns.due


def test_a_retiring_consumers_successor_is_forked_at_its_report_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = _supervisor(count=2)
    forked = _record_forks(sup, monkeypatch)
    retiring, other = _consumer(sup, 0, 0.0), _consumer(sup, 1, 0.0)
    sup._report(retiring, "X")
    assert forked == [0] and retiring.retiring
    successor = ConsumerProcess(0, 3000, -1, forked_at=1.0, ready=True, last_report=1.0)
    sup.consumers[successor.pid] = successor
    sup.unit.told_ready = True
    sup._supervise(1.5)  # three processes, two consumers: the watchdog is fed
    assert sup.notifier.sent[-1] == "WATCHDOG" and "2 consumer(s)" in sup.status_line()
    del sup.consumers[retiring.pid]
    sup._exited(retiring, EX_RECYCLE << 8)  # nothing more to fork
    assert forked == [0] and not sup.respawns.due and other.index == 1


def test_exit_status_reads_like_billiards() -> None:
    assert exit_status(signal.SIGKILL) == "signal 9 (SIGKILL)"
    assert exit_status(3 << 8) == "exitcode 3"
    assert os.waitstatus_to_exitcode(3 << 8) == 3


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:pw@127.0.0.1:6379/1", (1, 0)),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/2", (2, 0)),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:other@127.0.0.1:6379/1", None),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/1", None),
        ("rediss://h:6379/0?ssl_cert_reqs=required", "rediss://h:6379/1", None),
        ("sentinel://h:26379/0", "sentinel://h:26379/1", None),
    ],
)
def test_results_ride_with_the_ack_only_on_the_brokers_own_server(
    broker: str, backend: str, expected: Any
) -> None:
    assert databases_on_one_server(broker, backend) == expected


def test_a_consumer_past_its_hard_limit_is_killed_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.worker.consumers import kills
    from appliance.worker.consumers.protocol import KilledFor

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: killed.append((pid, signum)))
    sup = _supervisor()
    slow, quick = _consumer(sup, 0, 0.0), _consumer(sup, 1, 0.0)
    sup._report(slow, "S t1 10 id-1 demo.slow")
    sup._report(quick, "S t2 0 id-2 demo.forever")  # no limit
    slow.running.since = quick.running.since = 0.0  # type: ignore[union-attr]
    kills.enforce_hard_limits(sup.consumers.values(), 10.0 + kills.HARD_LIMIT_GRACE_SECONDS)
    assert killed == []  # within the grace
    kills.enforce_hard_limits(sup.consumers.values(), 12.0)
    kills.enforce_hard_limits(sup.consumers.values(), 13.0)  # killed once
    assert killed == [(slow.pid, signal.SIGKILL)] and slow.killed_for is KilledFor.TIME_LIMIT
    kills.enforce_stop_timeout(sup.consumers.values(), 10.0)
    assert killed[-1] == (quick.pid, signal.SIGKILL) and quick.killed_for is KilledFor.STOP


def test_the_first_consumer_to_consume_has_its_memory_checked_against_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.worker.consumers import supervisor

    checked: list[tuple[int, int | None]] = []
    monkeypatch.setattr(
        supervisor, "check_fresh_child", lambda pid, kib: checked.append((pid, kib))
    )
    sup = _supervisor()
    sup.limits = ConsumerLimits(max_tasks=100, max_memory_kib=200_000)
    first, second = _consumer(sup, 0, 0.0, ready=False), _consumer(sup, 1, 0.0, ready=False)
    sup._report(first, "R")
    sup._report(second, "R")
    assert checked == [(first.pid, 200_000)] and first.ready and second.ready


def test_a_line_that_is_no_report_still_shows_the_consumer_alive() -> None:
    sup = _supervisor()
    consumer = _consumer(sup, 0, 0.0)
    sup._report(consumer, "S garbled")
    assert consumer.running is None and consumer.last_report > 0.0
