"""The ``consumers`` worker topology: N consumer processes under a small supervising parent.

With Celery's prefork pool every task crosses from the worker's main process to a pool
child and back (pickled through pipes, a second event loop on each side); on two cores
that hand-off, not Redis, bounds a drain (README, Performance). Here each process of the
unit is a Celery worker of its own that fetches and runs its tasks inline
(:mod:`appliance.worker.consumers.pool`), and this parent, which runs no task and holds no
broker connection while it forks, keeps the promises prefork's main process keeps:

- a consumer that dies (SIGKILL, the OOM killer, ``os._exit`` in a task) is replaced at
  once, and the message it was running goes back to its queue at once - counted against
  ``APPLIANCE_MAX_WORKER_LOST`` and dead-lettered at the bound, as in prefork
  (:mod:`appliance.worker.lost`) - instead of waiting out the visibility timeout;
- the hard time limit: a consumer still in a task past its limit is killed, the task
  gets a FAILURE result and record (``TimeLimitExceeded``) and its message is acked;
- recycling: a consumer that retires (task count, unique memory) says so (``X``) before
  its last ack and exits with ``EX_RECYCLE`` after it. A task-count retirement is told
  a few tasks ahead (``P``): its successor is forked then from this preloaded parent and
  waits, started, at a gate (a pipe) that ``X`` opens, so the unit is never a consumer
  short while one starts (a memory retirement forks its successor at ``X``);
- SIGTERM drains: each consumer finishes its task; at the stop timeout the rest are
  killed and their messages requeued;
- systemd: READY once every consumer consumes, WATCHDOG only while each consumer is
  either in a task within its limit or its event loop reports progress, STATUS, STOPPING.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from billiard.common import human_status

from appliance.core import constants as C
from appliance.core import keys
from appliance.worker.consumers.pool import EX_RECYCLE

logger = logging.getLogger("appliance.consumers")

# A consumer reports a turn of its event loop this often (its supervision step's timer).
CONSUMER_PING_SECONDS = 2.0
# ...and is called stuck when idle with no report for this long.
CONSUMER_SILENT_SECONDS = 15.0
# A consumer may take this long from fork to consuming before it counts as stuck.
CONSUMER_START_SECONDS = 60.0
# A consumer past its hard time limit is killed after this grace (its own soft limit and
# Celery's handling of it come first).
HARD_LIMIT_GRACE_SECONDS = 1.0
# Consumers that fail before consuming are forked again after a growing pause; after
# this many failures in a row the parent gives up and exits with the last exit code.
START_FAILURES_BEFORE_EXIT = 5
RESPAWN_PAUSE_MAX_SECONDS = 10.0
_TICK_SECONDS = 0.5
# The parent reads its consumers' reports at most this often. A consumer writes two lines
# per task; waking for each one took 15,500 turns for 10,000 tasks at 1,075 tasks/s
# (3,700 paced), 45 us of a core per task more. No report is urgent to within this
# (limits are in seconds; a signal waits for the next turn), and a pipe holds far more
# than a pause's lines.
REPORT_PACE_SECONDS = 0.002
# How often the parent looks for revokes with --terminate of the tasks it runs.
TERMINATE_CHECK_SECONDS = 0.5


@dataclass
class Running:
    """The task a consumer reported starting: its message's tag and its hard limit."""

    tag: str
    hard_limit: float
    task_id: str
    name: str
    since: float


@dataclass
class ConsumerProcess:
    index: int
    pid: int
    fd: int
    forked_at: float
    buffer: bytes = b""
    ready: bool = False
    last_report: float = 0.0
    running: Running | None = None
    held: str | None = None  # a message its ack fetched, not yet started
    killed_for: str | None = None
    done: int = 0
    retiring: bool = False  # its successor is forked already
    gate: int | None = None  # a successor held at its gate: the pipe's write end


def log_to_stderr(level: str) -> None:
    """The parent's own log lines (Celery configures logging in each consumer only)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/Supervisor] %(message)s"))
    for log in _parent_loggers():
        log.addHandler(handler)
        log.setLevel(level.upper())
        log.propagate = False


def _parent_loggers() -> list[logging.Logger]:
    # The parent's own lines, and those of the journal flushes and checks it runs.
    return [
        logger,
        logging.getLogger("appliance.records"),
        logging.getLogger("appliance.recycling"),
    ]


# What a consumer imports on its way to consuming, imported once here before the forks:
# each consumer would otherwise spend about 0.15 s of CPU importing them (celery's
# command line alone pulls in click-repl, prompt_toolkit and pygments), at every recycle.
_WORKER_MODULES = (
    "celery.bin.celery",
    "celery.bin.worker",
    "celery.apps.worker",
    "celery.worker.worker",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.consumer.connection",
    "celery.worker.consumer.control",
    "celery.worker.consumer.tasks",
    "celery.worker.strategy",
    "celery.worker.loops",
    "celery.worker.pidbox",
    "celery.worker.control",
    "celery.concurrency.solo",
    "celery.app.trace",
    "celery.app.control",
    "celery.app.log",
    "celery.events",
    "celery.worker.autoscale",
    "celery.worker.consumer.delayed_delivery",
    "multiprocessing.sharedctypes",
    "kombu.transport.redis",
    "kombu.asynchronous",
    "appliance.broker.transport",
    "appliance.worker.consumer",
    "appliance.worker.consumers.pool",
    "appliance.worker.consumers.settle",
    "appliance.broker.result_backend",
)


def preload_worker_modules() -> None:
    import importlib

    for name in _WORKER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def exit_status(status: int) -> str:
    """A wait status as billiard words a child's end: 'signal 9 (SIGKILL)', 'exitcode 3'."""
    return str(human_status(os.waitstatus_to_exitcode(status)))


@dataclass
class Supervisor:
    """Forks, watches and replaces the consumers of one worker unit (see module doc)."""

    count: int
    # (index, report fd, gate fd or -1) -> exit code, in the child
    run_consumer: Callable[[int, int, int], int]
    stop_timeout: float
    notifier: Any
    watchdog: float | None
    describe: str = ""
    flusher: Any = None  # appliance.records.journal.Flusher of this unit's records
    redis: Any = None  # a redis-py client of the broker (fork-safe pool), for terminates
    consumers: dict[int, ConsumerProcess] = field(default_factory=dict)
    stopping: bool = False
    _signals: list[int] = field(default_factory=list)
    _start_failures: int = 0
    _quick_exits: int = 0
    _last_code: int = 0
    _respawn_at: dict[int, float] = field(default_factory=dict)
    _told_ready: bool = False
    _next_watchdog: float = 0.0
    _next_status: float = 0.0
    _stop_deadline: float | None = None
    _finished: int = 0
    _next_terminate_check: float = 0.0
    _fresh_checked: bool = False
    _last_turn: float = 0.0

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)
        for index in range(self.count):
            self._fork(index)
        while self.consumers or (not self.stopping and self._respawn_at):
            self._turn()
        signal.set_wakeup_fd(-1)
        if self.flusher is not None:
            self.flusher.flush(everything=True)
        logger.info("all consumers stopped")
        return self._last_code if self._start_failures >= START_FAILURES_BEFORE_EXIT else 0

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
        self._enforce_limits(now)
        self._terminate_revoked(now)
        for index, when in list(self._respawn_at.items()):
            if when <= now and not self.stopping:
                del self._respawn_at[index]
                self._fork(index)
        self._supervise(now)
        if self.flusher is not None and self.flusher.due(now):
            self.flusher.flush(now)

    def _timeout(self) -> float:
        if self.flusher is not None:
            from appliance.records.journal import FLUSH_SECONDS

            return min(_TICK_SECONDS, FLUSH_SECONDS)
        return _TICK_SECONDS

    # -- forking ----------------------------------------------------------------------

    def _fork(self, index: int, gated: bool = False) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC) if gated else (-1, None)
        pid = os.fork()
        if pid == 0:  # the consumer
            code = 1
            try:
                self._in_child(read_fd, gate_w)
                code = self.run_consumer(index, write_fd, gate_r)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                logger.exception("consumer %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        if gate_w is not None:
            os.close(gate_r)
        os.set_blocking(read_fd, False)
        consumer = ConsumerProcess(index, pid, read_fd, time.monotonic(), gate=gate_w)
        self.consumers[pid] = consumer
        self._selector.register(read_fd, selectors.EVENT_READ, consumer)
        logger.debug("consumer %d forked (pid %d)", index, pid)

    def _in_child(self, read_fd: int, gate_w: int | None) -> None:
        signal.set_wakeup_fd(-1)
        for log in _parent_loggers():
            log.handlers.clear()  # Celery sets up the consumer's own logging
            log.propagate = True
            log.setLevel(logging.NOTSET)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        parent = os.getppid()
        with contextlib.suppress(Exception):
            from billiard.util import set_pdeathsig

            set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
        self._selector.close()
        theirs = [fd for c in self.consumers.values() for fd in (c.fd, c.gate)]
        for fd in (read_fd, gate_w, self._wake_r, self._wake_w, *theirs):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- reports ----------------------------------------------------------------------

    def _read(self, consumer: ConsumerProcess) -> None:
        try:
            while True:
                chunk = os.read(consumer.fd, 65536)
                if not chunk:
                    break
                consumer.buffer += chunk
        except BlockingIOError:
            pass
        except OSError:
            pass
        *lines, consumer.buffer = consumer.buffer.split(b"\n")
        for line in lines:
            self._report(consumer, line.decode(errors="replace"))

    def _report(self, consumer: ConsumerProcess, line: str) -> None:
        now = time.monotonic()
        consumer.last_report = now
        kind, _, rest = line.partition(" ")
        if kind == "S":
            fields = rest.split(" ", 3)
            if len(fields) == 4:
                tag, limit, task_id, name = fields
                consumer.running = Running(tag, float(limit or 0), task_id, name, now)
                if consumer.held == tag:
                    consumer.held = None
        elif kind == "E":
            consumer.running = None
            consumer.done += 1
            self._finished += 1
            consumer.held = None if rest in ("", "-") else rest
            self._start_failures = self._quick_exits = 0
        elif kind == "P":
            if not self.stopping and self._successor(consumer) is None:
                self._fork(consumer.index, gated=True)
        elif kind == "X":
            consumer.retiring = True
            successor = self._successor(consumer)
            if successor is not None:
                logger.debug("consumer %d (pid %d) retires; successor pid %d consumes (%s)",
                             consumer.index, consumer.pid, successor.pid,
                             "started" if successor.ready else "starting")  # fmt: skip
                self._open_gate(successor)
            elif not self.stopping:
                self._fork(consumer.index)
        elif kind == "R":
            consumer.ready = True
            self._start_failures = 0
            if not self._fresh_checked:
                self._fresh_checked = True  # as prefork does for its first child
                from appliance.worker.consumers.pool import limits
                from appliance.worker.recycling import check_fresh_child

                check_fresh_child(consumer.pid, limits.max_memory_kib)
        # "W": the report itself is the news

    def _successor(self, consumer: ConsumerProcess) -> ConsumerProcess | None:
        """The successor held at its gate for *consumer*'s place, if one is forked."""
        for other in self.consumers.values():
            if other.index == consumer.index and other.gate is not None and other is not consumer:
                return other
        return None

    def _open_gate(self, consumer: ConsumerProcess) -> None:
        """Let a successor held at its gate pass: closing the pipe's write end is the
        signal (its read returns at EOF); also what a gone successor's pipe needs."""
        if consumer.gate is not None:
            with contextlib.suppress(OSError):
                os.close(consumer.gate)
            consumer.gate = None

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
        running, held = consumer.running, consumer.held
        if running is not None:
            if consumer.killed_for == "time limit":
                from appliance.worker.consumers.settle import hard_time_limit_exceeded

                hard_time_limit_exceeded(running.tag, running.task_id, running.name,
                                         running.hard_limit)  # fmt: skip
            elif consumer.killed_for == "revoked":
                from appliance.worker.consumers.settle import terminated

                terminated(running.tag, running.task_id, running.name)
            elif consumer.killed_for == "stop":
                from appliance.worker.consumers.settle import requeue

                requeue(running.tag, f"{running.name}[{running.task_id}] killed at stop")
            else:
                from appliance.worker.consumers.settle import consumer_lost

                consumer_lost(running.tag, running.task_id, running.name, how)
        if held is not None and code < 0 and (running is None or held != running.tag):
            # Killed: it could not restore what its last ack fetched, as a stop does.
            from appliance.worker.consumers.settle import requeue

            requeue(held, "a message its ack had fetched")
        if consumer.gate is not None:  # a successor that died at its gate
            self._open_gate(consumer)
            if not self.stopping:
                logger.warning("consumer %d's successor (pid %d) exited (%s) before "
                               "consuming", consumer.index, consumer.pid, how)  # fmt: skip
            return  # its predecessor forks another when it retires
        successor = self._successor(consumer)
        if successor is not None:  # it ended before retiring: its successor takes over
            self._open_gate(successor)
        if self.stopping or consumer.retiring or successor is not None:
            return
        if code == EX_RECYCLE:
            self._fork(consumer.index)
            return
        if consumer.killed_for is None:
            logger.warning("consumer %d (pid %d) exited (%s); replacing it",
                           consumer.index, consumer.pid, how)  # fmt: skip
        if consumer.killed_for is not None or running is not None or consumer.done:
            self._fork(consumer.index)  # it worked, or died in a task: replace it now
            return
        # It ran nothing: a bad start (config, Redis refusing us, an unrecoverable error
        # at once). Fork again after a growing pause, and give up on a start that never
        # reaches consuming.
        self._quick_exits += 1
        if not consumer.ready:
            self._start_failures += 1
            self._last_code = code if code > 0 else 1
        if self._start_failures >= START_FAILURES_BEFORE_EXIT:
            logger.error(
                "consumers failed to start %d times in a row (last: %s); exiting",
                self._start_failures,
                how,
            )
            self._stop(signal.SIGTERM)
            return
        pause = min(RESPAWN_PAUSE_MAX_SECONDS, 0.25 * 2 ** min(self._quick_exits, 6))
        self._respawn_at[consumer.index] = time.monotonic() + pause

    # -- limits, stop, systemd --------------------------------------------------------

    def _enforce_limits(self, now: float) -> None:
        for consumer in self.consumers.values():
            running = consumer.running
            if running is None or not running.hard_limit or consumer.killed_for:
                continue
            if now - running.since > running.hard_limit + HARD_LIMIT_GRACE_SECONDS:
                logger.error(
                    "Hard time limit (%ss) exceeded for %s[%s]: killing consumer %d (pid %d)",
                    running.hard_limit,
                    running.name,
                    running.task_id,
                    consumer.index,
                    consumer.pid,
                )
                self._kill(consumer, "time limit")
        if self._stop_deadline is not None and now > self._stop_deadline:
            for consumer in self.consumers.values():
                if consumer.killed_for is None:
                    logger.warning(
                        "consumer %d (pid %d) did not stop within %gs (stop timeout); killing it",
                        consumer.index,
                        consumer.pid,
                        self.stop_timeout,
                    )
                    self._kill(consumer, "stop")

    def _terminate_revoked(self, now: float) -> None:
        """Kill the consumers running a task revoked with --terminate (operations.revoke)."""
        if self.redis is None or now < self._next_terminate_check:
            return
        self._next_terminate_check = now + TERMINATE_CHECK_SECONDS
        busy = [c for c in self.consumers.values() if c.running and not c.killed_for]
        if not busy:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for consumer in busy:
                pipe.zscore(keys.TERMINATE_KEY, consumer.running.task_id)  # type: ignore[union-attr]
            scores = pipe.execute()
        except Exception as exc:
            logger.debug("terminate requests not read: %s", exc)
            return
        for consumer, score in zip(busy, scores, strict=True):
            if score is not None and consumer.running is not None:
                logger.warning(
                    "terminating %s[%s] (revoked with --terminate): killing consumer %d (pid %d)",
                    consumer.running.name,
                    consumer.running.task_id,
                    consumer.index,
                    consumer.pid,
                )
                self._kill(consumer, "revoked")

    def _kill(self, consumer: ConsumerProcess, why: str) -> None:
        consumer.killed_for = why
        with contextlib.suppress(ProcessLookupError):
            os.kill(consumer.pid, signal.SIGKILL)

    def _handle_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # _reap follows
        self._stop(signum)

    def _stop(self, signum: int) -> None:
        if not self.stopping:
            self.stopping = True
            self._respawn_at.clear()
            running = sum(1 for c in self.consumers.values() if c.running)
            logger.info("stopping %d consumer(s), %d in a task", len(self.consumers), running)
            extend = int(self.stop_timeout * 1_000_000) if self.stop_timeout else None
            self.notifier.stopping(f"draining {running} running task(s)", extend_usec=extend)
            self._stop_deadline = time.monotonic() + self.stop_timeout
        for consumer in self.consumers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(consumer.pid, signum)
        for consumer in self.consumers.values():
            self._open_gate(consumer)  # signalled first: a held successor stops as it passes

    def _healthy(self, consumer: ConsumerProcess, now: float) -> bool:
        if consumer.gate is not None:
            return True  # waiting for its predecessor, on purpose
        if consumer.running is not None:
            limit = consumer.running.hard_limit
            return not limit or now - consumer.running.since <= limit + CONSUMER_SILENT_SECONDS
        if not consumer.ready:
            return now - consumer.forked_at <= CONSUMER_START_SECONDS
        return now - consumer.last_report <= CONSUMER_SILENT_SECONDS

    def _supervise(self, now: float) -> None:
        if self.stopping:
            return
        if (
            not self._told_ready
            and self.consumers
            and all(c.ready for c in self.consumers.values())
        ):
            self._told_ready = True
            self.notifier.ready(self.status_line())
            logger.info("%d consumer(s) consuming", len(self.consumers))
        if self.watchdog and self._told_ready and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog
            stuck = [c for c in self.consumers.values() if not self._healthy(c, now)]
            missing = self.count - self._running_indexes()
            if not stuck and not missing:
                self.notifier.watchdog()
            else:
                logger.warning(
                    "watchdog ping withheld: %s",
                    ", ".join(
                        [f"consumer {c.index} (pid {c.pid}) not progressing" for c in stuck]
                        + ([f"{missing} consumer(s) not running"] if missing else [])
                    ),
                )
        if now >= self._next_status:
            self._next_status = now + C.HEARTBEAT_INTERVAL
            self.notifier.status(self.status_line())

    def _running_indexes(self) -> int:
        """Consumers, counting a retiring one and its successor once."""
        return len({c.index for c in self.consumers.values()})

    def status_line(self) -> str:
        running = sum(1 for c in self.consumers.values() if c.running)
        return (
            f"{self.describe}{self._running_indexes()} consumer(s); done {self._finished}, "
            f"active {running}"
        )
