"""The ``consumers`` worker topology: N consumer processes under a small supervising parent.

With Celery's prefork pool every task crosses from the worker's main process to a pool
child and back (pickled through pipes, a second event loop on each side); on two cores
that hand-off, not Redis, bounds a drain. Here each process of the
unit is a Celery worker of its own that fetches and runs its tasks inline
(:mod:`appliance.worker.consumers.pool`), and this parent, which runs no task and holds no
broker connection while it forks, keeps the promises prefork's main process keeps (what
a consumer and the parent tell each other: :mod:`appliance.worker.consumers.protocol`):

- a consumer that dies (SIGKILL, the OOM killer, ``os._exit`` in a task) is replaced at
  once, and the message it was running goes back to its queue at once - counted against
  ``APPLIANCE_MAX_WORKER_LOST`` and dead-lettered at the bound, as in prefork
  (:mod:`appliance.worker.consumers.settle`) - instead of waiting out the visibility
  timeout;
- the hard time limit: a consumer still in a task past its limit is killed, the task
  gets a FAILURE result and record (``TimeLimitExceeded``) and its message is acked
  (:mod:`appliance.worker.consumers.kills`);
- recycling: a consumer that retires (task count, unique memory) says so (``X``) before
  its last ack and exits with ``EX_RECYCLE`` after it. A task-count retirement is told
  a few tasks ahead (``P``): its successor is forked then from this preloaded parent and
  waits, started, at a gate (a pipe) that ``X`` opens, so the unit is never a consumer
  short while one starts (a memory retirement forks its successor at ``X``);
- SIGTERM drains: each consumer finishes its task; at the stop timeout the rest are
  killed and their messages requeued;
- systemd: READY once every consumer consumes, WATCHDOG only while each consumer is
  either in a task within its limit or its event loop reports progress, STATUS, STOPPING
  (:mod:`appliance.worker.consumers.unit`).

A parent killed with SIGKILL takes its consumers with it (PDEATHSIG), as a killed prefork
worker does; their messages come back after the visibility timeout, as in prefork.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.worker.consumers import kills, protocol
from appliance.worker.consumers.children import ConsumerProcess, Running, exit_status
from appliance.worker.consumers.fork import PARENT_SIGNALS, RunConsumer, fork_consumer
from appliance.worker.consumers.process import ConsumerLimits
from appliance.worker.consumers.protocol import Kind
from appliance.worker.consumers.respawn import Respawns
from appliance.worker.consumers.unit import UnitNotifier, running_indexes
from appliance.worker.recycling import EX_RECYCLE, check_fresh_child

logger = logging.getLogger("appliance.consumers")

_TICK_SECONDS = 0.5
# The parent reads its consumers' reports at most this often. A consumer writes two lines
# per task; waking for each one cost tens of microseconds of a core per task. No report
# is urgent to within this
# (limits are in seconds; a signal waits for the next turn), and a pipe holds far more
# than a pause's lines.
REPORT_PACE_SECONDS = 0.002


@dataclass
class Supervisor:
    """Forks, watches and replaces the consumers of one worker unit (see module doc)."""

    count: int
    run_consumer: RunConsumer
    stop_timeout: float
    notifier: Any
    watchdog: float | None
    describe: str = ""
    flusher: Any = None  # appliance.records.journal.Flusher of this unit's records
    redis: Any = None  # a redis-py client of the broker (fork-safe pool), for terminates
    limits: ConsumerLimits = field(default_factory=ConsumerLimits)
    consumers: dict[int, ConsumerProcess] = field(default_factory=dict)
    stopping: bool = False
    _signals: list[int] = field(default_factory=list)
    _stop_deadline: float | None = None
    _finished: int = 0
    _fresh_checked: bool = False
    _last_turn: float = 0.0

    def __post_init__(self) -> None:
        self.respawns = Respawns()
        self.unit = UnitNotifier(self.notifier, self.watchdog, self.count)
        self.terminates = kills.TerminateRequests(self.redis)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in PARENT_SIGNALS:
            signal.signal(signum, self._on_signal)
        for index in range(self.count):
            self._fork(index)
        while self.consumers or (not self.stopping and self.respawns.due):
            self._turn()
        signal.set_wakeup_fd(-1)
        if self.flusher is not None:
            self.flusher.flush(everything=True)
        logger.info("all consumers stopped")
        return self.respawns.exit_code()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _turn(self) -> None:
        pause = self._last_turn + REPORT_PACE_SECONDS - time.monotonic()
        if pause > 0 and not self._signals:
            time.sleep(pause)
        self._last_turn = time.monotonic()
        for key, _ in self._selector.select(self._timeout()):
            if key.fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                self._read(key.data)
        while self._signals:
            self._handle_signal(self._signals.pop(0))
        self._reap()
        now = time.monotonic()
        kills.enforce_hard_limits(self.consumers.values(), now)
        if self._stop_deadline is not None and now > self._stop_deadline:
            kills.enforce_stop_timeout(self.consumers.values(), self.stop_timeout)
        self.terminates.enforce(self.consumers.values(), now)
        if not self.stopping:
            for index in self.respawns.take_due(now):
                self._fork(index)
        self._supervise(now)
        if self.flusher is not None and self.flusher.due(now):
            self.flusher.flush(now)

    def _timeout(self) -> float:
        if self.flusher is not None:
            from appliance.records.journal import FLUSH_SECONDS

            return min(_TICK_SECONDS, FLUSH_SECONDS)
        return _TICK_SECONDS

    def _fork(self, index: int, gated: bool = False) -> None:
        theirs = [fd for c in self.consumers.values() for fd in (c.fd, c.gate)]
        parents = [self._wake_r, self._wake_w, *theirs]
        consumer = fork_consumer(
            index, self.run_consumer, gated=gated, selector=self._selector, parents=parents
        )
        self.consumers[consumer.pid] = consumer
        self._selector.register(consumer.fd, selectors.EVENT_READ, consumer)
        logger.debug("consumer %d forked (pid %d)", index, consumer.pid)

    # -- reports ----------------------------------------------------------------------

    def _read(self, consumer: ConsumerProcess) -> None:
        try:
            while True:
                chunk = os.read(consumer.fd, 65536)
                if not chunk:
                    break
                consumer.buffer += chunk
        except OSError:  # BlockingIOError: all read
            pass
        *lines, consumer.buffer = consumer.buffer.split(b"\n")
        for line in lines:
            self._report(consumer, line.decode(errors="replace"))

    def _report(self, consumer: ConsumerProcess, line: str) -> None:
        now = time.monotonic()
        consumer.last_report = now
        report = protocol.parse(line)
        if report is None:
            return
        if report.kind is Kind.STARTED:
            consumer.running = Running(
                report.tag, report.hard_limit, report.task_id, report.name, now
            )
            if consumer.held == report.tag:
                consumer.held = None
        elif report.kind is Kind.ENDED:
            consumer.running = None
            consumer.done += 1
            self._finished += 1
            consumer.held = report.fetched
            self.respawns.worked()
        elif report.kind is Kind.RETIRING_SOON:
            if not self.stopping and self._successor(consumer) is None:
                self._fork(consumer.index, gated=True)
        elif report.kind is Kind.RETIRING:
            consumer.retiring = True
            successor = self._successor(consumer)
            if successor is not None:
                logger.debug("consumer %d (pid %d) retires; successor pid %d consumes (%s)",
                             consumer.index, consumer.pid, successor.pid,
                             "started" if successor.ready else "starting")  # fmt: skip
                successor.open_gate()
            elif not self.stopping:
                self._fork(consumer.index)
        elif report.kind is Kind.READY:
            consumer.ready = True
            self.respawns.consuming()
            if not self._fresh_checked:
                self._fresh_checked = True  # as prefork does for its first child
                check_fresh_child(consumer.pid, self.limits.max_memory_kib)
        # PROGRESS: the report itself is the news

    def _successor(self, consumer: ConsumerProcess) -> ConsumerProcess | None:
        """The successor held at its gate for *consumer*'s place, if one is forked."""
        for other in self.consumers.values():
            if other.index == consumer.index and other.gate is not None and other is not consumer:
                return other
        return None

    # -- exits ------------------------------------------------------------------------

    def _reap(self) -> None:
        while self.consumers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            consumer = self.consumers.pop(pid, None)
            if consumer is None:
                continue
            self._read(consumer)
            self._selector.unregister(consumer.fd)
            os.close(consumer.fd)
            self._exited(consumer, status)

    def _exited(self, consumer: ConsumerProcess, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = exit_status(status)
        if consumer.running is not None or consumer.held is not None:
            from appliance.worker.consumers.settle import settle_exit

            settle_exit(consumer, code, how)
        if consumer.gate is not None:  # a successor that died at its gate
            consumer.open_gate()
            if not self.stopping:
                logger.warning("consumer %d's successor (pid %d) exited (%s) before "
                               "consuming", consumer.index, consumer.pid, how)  # fmt: skip
            return  # its predecessor forks another when it retires
        successor = self._successor(consumer)
        if successor is not None:  # it ended before retiring: its successor takes over
            successor.open_gate()
        if self.stopping or consumer.retiring or successor is not None:
            return
        if code == EX_RECYCLE:
            self._fork(consumer.index)
            return
        if consumer.killed_for is None:
            logger.warning("consumer %d (pid %d) exited (%s); replacing it",
                           consumer.index, consumer.pid, how)  # fmt: skip
        if consumer.killed_for is not None or consumer.running is not None or consumer.done:
            self._fork(consumer.index)  # it worked, or died in a task: replace it now
            return
        # It ran nothing: fork it again after a pause, or give up (see respawn.py).
        if not self.respawns.ran_nothing(consumer.index, consumer.ready, code, time.monotonic()):
            logger.error(
                "consumers failed to start %d times in a row (last: %s); exiting",
                self.respawns.start_failures,
                how,
            )
            self._stop(signal.SIGTERM)

    # -- stop, systemd ----------------------------------------------------------------

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap follows
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            self.stopping = True
            self.respawns.due.clear()
            running = sum(1 for c in self.consumers.values() if c.running)
            logger.info("stopping %d consumer(s), %d in a task", len(self.consumers), running)
            self.unit.stopping(running, self.stop_timeout)
            self._stop_deadline = time.monotonic() + self.stop_timeout
        for consumer in self.consumers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(consumer.pid, signum)
        for consumer in self.consumers.values():
            consumer.open_gate()  # signalled first: a held successor stops as it passes

    def _supervise(self, now: float) -> None:
        if not self.stopping:
            self.unit.supervise(list(self.consumers.values()), self.status_line, now)

    def status_line(self) -> str:
        running = sum(1 for c in self.consumers.values() if c.running)
        return (
            f"{self.describe}{running_indexes(self.consumers.values())} consumer(s); "
            f"done {self._finished}, active {running}"
        )
