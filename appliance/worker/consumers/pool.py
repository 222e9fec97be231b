"""The pool of one consumer process (the ``consumers`` worker topology).

In this topology every process of a worker unit consumes from Redis and runs the task
it fetched itself, inline, as Celery's solo pool does: no hand-off to a pool child (no
pickling, no pipes, no second event loop per task). The promises prefork keeps are
split between this module, in each consumer, and its supervising parent
(:mod:`appliance.worker.consumers.supervisor`):

- soft time limit: here, a ``SIGALRM`` timer raises ``SoftTimeLimitExceeded`` in the
  task, as billiard's signal does in a prefork child;
- hard time limit, lost consumers, respawning: the parent, told which message each
  consumer holds and since when (two reports per task,
  :mod:`appliance.worker.consumers.protocol`);
- recycling by task count and unique memory: here, after each task and before its ack
  (:mod:`appliance.worker.recycling`'s policy): the ack then fetches nothing more and the
  consumer exits with :data:`~appliance.worker.recycling.EX_RECYCLE`; its successor,
  forked a few tasks before a task-count retirement, waits started at its gate and
  consumes from that moment.

What the pool knows of its process (the parent link, the recycling limits, what a task's
ack carries) is :func:`appliance.worker.consumers.process.current`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery.concurrency import solo
from celery.exceptions import SoftTimeLimitExceeded, WorkerShutdown, WorkerTerminate
from celery.worker import state as worker_state

from appliance.worker.consumers import process as consumer_process
from appliance.worker.consumers import protocol
from appliance.worker.recycling import EX_RECYCLE, RecyclePolicy, jittered_limit

logger = logging.getLogger("appliance.consumer")

# How many tasks before a task-count retirement its successor is forked (at most a
# tenth of the limit; none below 10).
SUCCESSOR_LEAD_TASKS = 200


def retiring() -> bool:
    """This consumer process retires (recycling): the unit, and its node's heartbeat key,
    live on in its successor."""
    return bool(worker_state.should_stop == EX_RECYCLE)


def share_rate_limits(app: Any, consumers: int) -> None:
    """Celery keeps a task's rate limit per consuming process: each of a unit's N
    consumers gets 1/N of it, so the unit starts no more than the rate the task names."""
    if consumers <= 1:
        return
    for task in app.tasks.values():
        limit = getattr(task, "rate_limit", None)
        if limit:
            task.rate_limit = shared_rate(limit, consumers)


def shared_rate(limit: Any, consumers: int) -> Any:
    """One consumer's share of the rate limit *limit* (Celery's forms: 10/m, 2.5, ...);
    a limit that is off (0, None, empty) or not understood stays as it is."""
    from celery.utils.time import rate

    try:
        per_second = rate(limit)
    except (TypeError, ValueError):
        return limit  # Celery's rate_limit command refuses it with its own words
    if consumers <= 1 or not per_second:
        return limit
    return f"{per_second / consumers}/s"


def _soft_limit_reached(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


class TaskPool(solo.TaskPool):  # type: ignore[misc]
    """Celery's solo pool with a soft time limit, parent reports and recycling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_apply = self._apply
        self.process_state = consumer_process.current()
        limits = self.process_state.limits
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
        self._redis: Any = None  # for terminate requests (terminate_task), made when needed
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
        state = self.process_state
        link = state.link
        request = args[2] if len(args) > 2 and isinstance(args[2], dict) else {}
        tag = str((request.get("properties") or {}).get("delivery_tag") or protocol.NO_TAG)
        task_id = str(args[1])
        if link is not None:
            link.send(protocol.started(tag, float(timeout or 0), task_id, str(args[0])))
        if soft_timeout:
            signal.setitimer(signal.ITIMER_REAL, float(soft_timeout))

        def done(result: Any) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)  # never inside the ack
            self.tasks_done += 1
            if self.tasks_done == self._successor_at and link is not None:
                link.send(protocol.Report(protocol.Kind.RETIRING_SOON))
            self._maybe_retire()
            if callback is not None:
                callback(result)

        state.ack.fetched_tag = None
        state.task_begins(task_id)
        try:
            self._run(target, args, kwargs or {}, done, accept_callback)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            state.task_ends()
            if link is not None:
                link.send(protocol.ended(state.ack.fetched_tag))
        if retiring() and not state.ack.owed:
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
        self.process_state.ack.fetch_on_ack = False  # this task's ack takes no next message
        worker_state.should_stop = EX_RECYCLE
        if self.process_state.link is not None:
            # The parent lets the successor consume (or forks one) now.
            self.process_state.link.send(protocol.Report(protocol.Kind.RETIRING))

    def terminate_task(self, task_id: str) -> None:
        """Stop the running task *task_id*: this process runs it in its event loop's thread,
        so it cannot signal it; its parent kills this consumer, stores REVOKED and acks the
        message (the path of ``appliance tasks revoke --terminate``: a terminate request
        in Redis, which the parent reads every 0.5 s). Called from the mailbox thread
        (Celery's ``revoke(terminate=True)``, appliance.worker.lost.Request.terminate);
        raises redis-py's errors. The signal asked for does not matter: it is SIGKILL."""
        from appliance.worker.consumers.kills import request_terminate

        if self._redis is None:
            from appliance.broker.admin import connect
            from appliance.config.settings import get_settings

            settings = get_settings()
            self._redis = connect(
                settings.broker_url,
                settings.redis_sentinel_master,
                socket_timeout=2,
                socket_connect_timeout=2,
            )
        request_terminate(self._redis, [task_id])
        logger.warning("terminate of %s asked of the parent (it kills this consumer)", task_id)

    def terminate_job(self, pid: int, signal: Any = None) -> None:
        """Celery's terminate of the task running in process *pid*: this one's."""
        task_id = self.process_state.ack.task_id
        if pid == os.getpid() and task_id is not None:
            self.terminate_task(task_id)

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info["max-tasks-per-child"] = self.policy.task_limit
        return info
