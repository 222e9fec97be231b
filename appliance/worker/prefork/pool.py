"""The worker's prefork pool: Celery's AsynPool with cheap, correct child recycling.

Replacing a child in stock Celery 5.7 / billiard 4.3 stalls its slot (celery #9588; the
figures are in docs/performance.md). Every replacement, in order:

1. The child waits for the main process to count its last result, polling every 100 ms,
   while the main process may write the idle-looking child its next task.
2. The exit is seen through the child's sentinel pipe, which closes a moment before the
   child can be reaped: ``maintain_pool`` finds no exit code and the replacement waits
   for the next unrelated exit or its 5-second timer.
3. Reaping reads the dead child's result pipe twice with a 10 ms timeout each.
4. Before the fork a full ``gc.collect()`` (asynpool, "Issue #2927") scans the main
   process's whole heap with the event loop blocked.
5. The new child's first prctl() through cffi builds cffi's C parser.

This subclass (selected by ``launch.worker_argv``; the billiard and Celery internals it
relies on are listed in tests/unit/upstream) fixes each: the child announces RETIRING
just before its last result, so the main process gives it no more work and starts its
successor at once (1); it polls for the count every millisecond; exits are watched
through a pidfd, readable only once the child can be reaped, with a short retry where
pidfds are missing (2); a reaped child's pipe is read without waiting (3); before a fork
only the young generations are collected and the heap is frozen for the fork, so a child
never scans (and so copies) inherited objects (4); cffi's parser is built once, in the
main process (5). Which child retires when is :mod:`appliance.worker.recycling`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from billiard import pool as billiard_pool
from billiard.pool import READY, RUN, TERMINATE
from billiard.util import get_pdeathsig
from celery.concurrency import asynpool, prefork
from celery.signals import worker_before_create_process

from appliance.core import constants as C
from appliance.core.exitcodes import SHUTDOWN_HUNG
from appliance.worker.recycling import (
    EX_RECYCLE,
    RecyclePolicy,
    RecycleReason,
    check_fresh_child,
    jittered_limit,
)

logger = logging.getLogger("appliance.pool")

# Child -> main process message: "the result that follows is my last". billiard uses
# 0-4 and asynpool 15 (WORKER_UP).
RETIRING = 16


class _AnnouncingQueue:
    """A child's result queue that says RETIRING before the last result."""

    def __init__(self, queue: Any, worker: RecyclingWorker, pid: int) -> None:
        self._queue, self._worker, self._pid = queue, worker, pid

    def put(self, message: Any) -> None:
        is_result = message[0] == READY
        if is_result and self._worker.retiring is None:
            reason = self._worker.policy.check(self._worker.tasks_done + 1)
            if reason is not None:
                self._worker.retiring = reason
                log = logger.warning if reason.kind == "memory" else logger.info
                log("replacing pool child %d: %s", self._pid, reason.describe())
                self._queue.put((RETIRING, (self._pid,)))
        self._queue.put(message)
        if is_result:
            self._worker.tasks_done += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class RecyclingWorker(asynpool.Worker):  # type: ignore[misc]
    """A pool child that retires by its own policy instead of billiard's checks."""

    outq: Any
    wait_for_job: Any
    on_ready_counter: Any

    def __init__(
        self,
        inq: Any,
        outq: Any,
        synq: Any = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        maxtasks: int | None = None,
        sentinel: Any = None,
        on_exit: Any = None,
        sigprotection: bool = True,
        wrap_exception: bool = True,
        max_memory_per_child: int | None = None,
        on_ready_counter: Any = None,
    ) -> None:
        self.task_limit_setting = maxtasks
        self.memory_limit_setting = max_memory_per_child
        super().__init__(
            inq, outq, synq, initializer, initargs, None, sentinel, on_exit,
            sigprotection, wrap_exception, None, on_ready_counter,
        )  # fmt: skip
        self.policy = RecyclePolicy(
            jittered_limit(maxtasks) if maxtasks else None, max_memory_per_child or None
        )
        self.retiring: RecycleReason | None = None
        self.tasks_done = 0

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        cls, args = super().__reduce__()
        args = list(args)
        args[5], args[10] = self.task_limit_setting, self.memory_limit_setting
        return cls, tuple(args)

    def on_loop_start(self, pid: int) -> None:
        super().on_loop_start(pid)
        self.outq = _AnnouncingQueue(self.outq, self, pid)

    def _make_child_methods(self, *args: Any, **kwargs: Any) -> None:
        super()._make_child_methods(*args, **kwargs)
        receive = self.wait_for_job

        def wait_for_job() -> Any:
            if self.retiring is not None:
                sys.exit(EX_RECYCLE)  # billiard's sys.exit in a child records the code
            return receive()

        self.wait_for_job = wait_for_job

    def _ensure_messages_consumed(self, completed: int) -> bool:
        counter = self.on_ready_counter
        if not counter:
            return False
        deadline = time.monotonic() + C.CHILD_EXIT_WAIT_SECONDS
        while counter.value < completed:
            if time.monotonic() > deadline:
                logger.warning("pool child exits before its results were counted")
                return False
            time.sleep(C.CHILD_EXIT_POLL_SECONDS)
        return True


def _exit_unless_done_within(seconds: float) -> None:
    """Arm a last resort for a worker whose shutdown hangs once its pool has stopped
    (seen after an unrecoverable error such as Redis refusing writes: the worker stayed
    up, consuming nothing, and under supervisord nothing restarted it). A daemon timer:
    a worker that exits in time never sees it."""

    def give_up() -> None:
        logger.critical(
            "worker shutdown still not done %gs after the pool stopped; exiting (%d)",
            seconds,
            SHUTDOWN_HUNG,
        )
        logging.shutdown()
        os._exit(SHUTDOWN_HUNG)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()


class RecyclingAsynPool(asynpool.AsynPool):  # type: ignore[misc]
    """AsynPool whose children are replaced without blocking or stalling the worker."""

    Worker = RecyclingWorker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._fresh_child_checked = False
        with contextlib.suppress(OSError):
            get_pdeathsig()  # builds cffi's C parser here once, not in every child
        super().__init__(*args, **kwargs)

    def _create_worker_process(self, i: int) -> Any:
        # Instead of asynpool's full gc.collect(): the child gets the heap frozen, so its
        # collector never scans (and copies) inherited objects, nor runs finalizers of
        # inherited garbage; the main process unfreezes at once.
        worker_before_create_process.send(sender=self)
        gc.collect(1)
        gc.freeze()
        try:
            return billiard_pool.Pool._create_worker_process(self, i)
        finally:
            gc.unfreeze()

    def join(self) -> None:
        """billiard's join, bounded by the stop timeout (hard time limit plus a margin).

        After an unrecoverable error the event loop no longer reads the children's result
        pipes: a child blocked writing a result into a full pipe reads neither its job
        pipe nor its stop sentinel, so the sentinel write and the join block, and the
        worker never exited (seen with Redis refusing writes). The join runs
        in a thread; children still there at the deadline are killed, which unblocks it.
        Their messages are unacked, so Redis hands them out again.
        """
        from appliance.config.settings import get_settings

        timeout = float(get_settings().stop_timeout)
        joiner = threading.Thread(target=self._join, name="pool-join", daemon=True)
        joiner.start()
        joiner.join(timeout)
        _exit_unless_done_within(C.SHUTDOWN_AFTER_POOL_SECONDS)
        if not joiner.is_alive():
            return
        for proc in list(self._pool):
            if proc._popen is not None and proc.exitcode is None:
                logger.warning(
                    "pool child %s did not stop within %gs (stop timeout); killing it",
                    proc.pid,
                    timeout,
                )
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
        joiner.join(10)

    def _join(self) -> None:
        try:
            super().join()
        except Exception as exc:  # a pipe to a killed child: nothing left to wait for
            logger.warning("pool join ended early: %s", exc)

    def create_result_handler(self) -> Any:
        handler = super().create_result_handler()
        handler.state_handlers[RETIRING] = self._on_child_retiring
        return handler

    def _on_child_retiring(self, pid: int) -> None:
        proc = next((w for w in self._pool if w.pid == pid), None)
        if proc is None:
            return
        self._all_inqueues.discard(proc.inqW_fd)
        if self._state != RUN or self._worker_handler._state != RUN or proc.exitcode is not None:
            return
        # Start the successor now, while the child finishes: maintain_pool counts it
        # when the child is reaped. It needs a free set of pipes.
        if None not in self._queues.values():
            self._queues[self.create_process_queues()] = None
        self._create_worker_process(proc.index)

    def on_process_alive(self, pid: int) -> None:
        super().on_process_alive(pid)
        if not self._fresh_child_checked:
            self._fresh_child_checked = True
            check_fresh_child(pid, self._max_memory_per_child)

    def process_flush_queues(self, proc: Any) -> None:
        if proc.exitcode is None:
            super().process_flush_queues(proc)
            return
        # A reaped child wrote all it ever will: read without asynpool's 10 ms wait.
        reader = proc.outq._reader
        on_state_change = self._result_handler.on_state_change
        while not reader.closed and self._state != TERMINATE:
            try:
                if not reader.poll(0):
                    return
                message = reader.recv()
            except (OSError, EOFError):
                return
            if message is None:
                return
            on_state_change(message)

    def _track_child_process(self, proc: Any, hub: Any) -> None:
        if not hasattr(proc, "_sentinel_poll"):
            # A pidfd turns readable once the child can be reaped; the sentinel earlier.
            with contextlib.suppress(AttributeError, OSError):
                proc._sentinel_poll = os.pidfd_open(proc.pid)
        super()._track_child_process(proc, hub)

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        super()._event_process_exit(hub, proc)
        if proc in self._pool:
            delay = C.REAP_RETRY_FIRST_SECONDS
            hub.call_later(delay, self._reap_later, hub, proc, delay)

    def _reap_later(self, hub: Any, proc: Any, delay: float) -> None:
        if proc not in self._pool:
            return
        self.maintain_pool()
        if proc in self._pool and delay < C.REAP_RETRY_MAX_SECONDS:
            hub.call_later(delay * 2, self._reap_later, hub, proc, delay * 2)


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    """Celery's prefork TaskPool running :class:`RecyclingAsynPool`."""

    Pool = RecyclingAsynPool
