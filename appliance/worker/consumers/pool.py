"""The pool of one consumer process (the ``consumers`` worker topology).

In this topology every process of a worker unit consumes from Redis and runs the task
it fetched itself, inline, as Celery's solo pool does: no hand-off to a pool child (no
pickling, no pipes, no second event loop per task). The promises prefork keeps are
split between this module, in each consumer, and its supervising parent
(:mod:`appliance.worker.consumers.supervisor`):

- soft time limit: here, a ``SIGALRM`` timer raises ``SoftTimeLimitExceeded`` in the
  task, as billiard's signal does in a prefork child;
- hard time limit, lost consumers, respawning: the parent, told by :class:`ParentLink`
  which message each consumer holds and since when (one pipe write per task);
- recycling by task count and unique memory: here, after each task and before its ack
  (:mod:`appliance.worker.recycling`'s policy): the ack then fetches nothing more and the
  consumer exits with :data:`EX_RECYCLE`; its successor, forked a few tasks before a
  task-count retirement, waits started at its gate and consumes from that moment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from celery.concurrency import solo
from celery.exceptions import SoftTimeLimitExceeded, WorkerShutdown, WorkerTerminate
from celery.worker import state as worker_state

from appliance.broker import transport as broker_transport
from appliance.worker.recycling import RecyclePolicy, jittered_limit
from appliance.worker.sdnotify import Notifier

logger = logging.getLogger("appliance.consumer")

# billiard's exit code for a child that retires (the parent replaces it without a word).
EX_RECYCLE = 0x9B
# How many tasks before a task-count retirement its successor is forked (at most a
# tenth of the limit; none below 10).
SUCCESSOR_LEAD_TASKS = 200


def select_pool() -> list[str]:
    """Register this pool as Celery's ``custom`` pool; the worker arguments that pick it."""
    from celery import concurrency

    concurrency.ALIASES["custom"] = f"{__name__}:TaskPool"
    return ["--pool", "custom"]


@dataclass(frozen=True)
class ConsumerLimits:
    """Recycling limits of a consumer; set by the parent before it forks."""

    max_tasks: int | None = None
    max_memory_kib: int | None = None


limits = ConsumerLimits()


class ParentLink:
    """Lines to the supervising parent through a pipe (each write is atomic, < PIPE_BUF).

    ``R`` consuming; ``W`` the event loop turned and the broker connection progresses;
    ``S <tag> <hard limit s> <task id> <name>`` a task starts; ``E <tag or ->`` it is
    done and acked, and the consumer now holds the message with that tag (the ack fetched
    it) or none; ``P`` it retires in a few tasks (fork the successor, held at its gate);
    ``X`` it retires now (let the successor consume, or fork one).

    *gate_fd* (a successor's): after reporting ``R`` it waits there, started but not
    fetching, until the parent closes the other end.
    """

    def __init__(self, fd: int, gate_fd: int = -1) -> None:
        self._fd = fd
        self._gate_fd = gate_fd

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: PDEATHSIG ends us
            os.write(self._fd, line.encode()[:500] + b"\n")

    def wait_at_gate(self) -> None:
        if self._gate_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.read(self._gate_fd, 1)  # EOF: go (the parent opened it, stops or is gone)
            os.close(self._gate_fd)
        self._gate_fd = -1


link: ParentLink | None = None


def retiring() -> bool:
    """This consumer process retires (recycling): the unit, and its node's heartbeat key,
    live on in its successor."""
    return bool(worker_state.should_stop == EX_RECYCLE)


class LinkNotifier(Notifier):
    """The consumer's stand-in for :class:`appliance.worker.sdnotify.Notifier`: the supervision
    step's READY and WATCHDOG reach the parent, which speaks to systemd for the unit."""

    def __init__(self) -> None:
        super().__init__("")

    @property
    def enabled(self) -> bool:
        return True

    def ready(self, status: str | None = None) -> bool:
        if link is not None:
            link.send("R")
            link.wait_at_gate()  # a successor: until its predecessor retires
        return True

    def watchdog(self) -> bool:
        if link is not None:
            link.send("W")
        return True

    def status(self, text: str) -> bool:
        return True

    def stopping(self, status: str | None = None, extend_usec: int | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def share_rate_limits(app: Any, consumers: int) -> None:
    """Celery keeps a task's rate limit per consuming process: each of a unit's N
    consumers gets 1/N of it, so the unit starts no more than the rate the task names."""
    from celery.utils.time import rate

    if consumers <= 1:
        return
    for task in app.tasks.values():
        limit = getattr(task, "rate_limit", None)
        if limit:
            task.rate_limit = f"{rate(limit) / consumers}/s"


def _soft_limit_reached(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


class TaskPool(solo.TaskPool):  # type: ignore[misc]
    """Celery's solo pool with a soft time limit, parent reports and recycling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_apply = self._apply
        self.policy = RecyclePolicy(
            jittered_limit(limits.max_tasks) if limits.max_tasks else None,
            limits.max_memory_kib or None,
        )
        self.tasks_done = 0
        # A task-count retirement is known ahead: its successor starts this many tasks
        # early and waits, so that the unit never consumes one short while it starts.
        task_limit = self.policy.task_limit or 0
        lead = min(SUCCESSOR_LEAD_TASKS, task_limit // 10)
        self._successor_at = task_limit - lead if lead else None
        signal.signal(signal.SIGALRM, _soft_limit_reached)

    def _apply(
        self,
        target: Any,
        args: tuple[Any, ...] = (),
        kwargs: Any = None,
        callback: Any = None,
        accept_callback: Any = None,
        soft_timeout: float | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        request = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
        tag = str((request.get("properties") or {}).get("delivery_tag") or "-")
        if link is not None:
            link.send(f"S {tag} {timeout or 0:g} {args[1]} {args[0]}")
        if soft_timeout:
            signal.setitimer(signal.ITIMER_REAL, float(soft_timeout))

        def done(result: Any) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)  # never inside the ack
            self.tasks_done += 1
            if self.tasks_done == self._successor_at and link is not None:
                link.send("P")
            self._maybe_retire()
            if callback is not None:
                callback(result)

        broker_transport.last_fetched_tag = None
        broker_transport.task_begins(str(args[1]))
        try:
            self._run(target, args, kwargs or {}, done, accept_callback)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            broker_transport.task_ends()
            if link is not None:
                link.send(f"E {broker_transport.last_fetched_tag or '-'}")
        if retiring() and not broker_transport.acks_owed:
            self._retire_now()

    def _retire_now(self) -> None:
        """A retiring consumer's last task is acked, its result and record written, and
        it holds no other message (its last ack fetched none): exit at once. Celery's warm
        shutdown would spend 25-55 ms of a core here (closing its bootsteps and broker
        connection, which the exit closes as well), with the successor starting beside
        it (the parent forked it at the X report)."""
        logging.shutdown()
        os._exit(EX_RECYCLE)

    def _run(self, target: Any, args: Any, kwargs: Any, done: Any, accept: Any) -> None:
        """Celery's apply_target, except that a task's own sys.exit (or an interrupt)
        ends this process as it ends a prefork child: the parent then settles the message
        as a lost consumer (requeued, bounded), instead of solo's odd WorkerLostError."""
        if accept:
            accept(os.getpid(), time.monotonic())
        try:
            result = target(*args, **kwargs)
        except (Exception, WorkerShutdown, WorkerTerminate):
            raise
        except BaseException as exc:
            code = exc.code if isinstance(exc, SystemExit) else 1
            code = code if isinstance(code, int) else (0 if code is None else 1)
            logger.error("the task ended consumer %d (exit code %d)", os.getpid(), code)
            logging.shutdown()
            os._exit(code)
        done(result)

    def _maybe_retire(self) -> None:
        if worker_state.should_stop:
            return
        reason = self.policy.check(self.tasks_done)
        if reason is None:
            return
        log = logger.warning if reason.kind == "memory" else logger.info
        log("replacing consumer %d: %s", os.getpid(), reason.describe())
        broker_transport.fetch_on_ack = False  # this task's ack takes no next message
        worker_state.should_stop = EX_RECYCLE
        if link is not None:
            link.send("X")  # the parent lets the successor consume (or forks one) now

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info["max-tasks-per-child"] = self.policy.task_limit
        return info
