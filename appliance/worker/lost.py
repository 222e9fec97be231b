"""A bound on redeliveries of a task whose pool child dies: no endless poison loop.

With ``task_acks_late`` and ``task_reject_on_worker_lost`` (the production profile),
Celery requeues a message whenever the pool child running it dies - SIGKILL, the OOM
killer, ``sys.exit`` or ``os._exit`` in the task: a ``WorkerLostError``. Nothing is lost,
but a task that always kills its child is redelivered forever and takes a child down
each time.

Every such loss comes back to the worker's main process through
``Request.on_failure``, so that is where this :class:`Request` (the Request class of
:class:`~appliance.tasks.base.ApplianceTask`) counts it: ``INCR`` of
``appliance:lost:<task id>`` (kept :data:`LOST_KEY_TTL_SECONDS`) on the broker's Redis,
through the message's own channel (same URL, password, TLS or Sentinel as the broker).
The count lives in Redis, not in memory, because the redelivery may land on another
worker, or on this one after a restart. Only a lost child costs a round trip; a normal
task costs nothing.

- Below ``APPLIANCE_MAX_WORKER_LOST`` losses: requeued as stock Celery does, the record
  set to RETRY with the reason, one log line (instead of Celery's traceback).
- At the bound: not redelivered. The message goes to the dead-letter store with its raw
  bytes (``appliance deadletter requeue ID`` brings it back, with a fresh count), the task
  gets a FAILURE result and record naming the reason, and the message is acked.
- ``APPLIANCE_MAX_WORKER_LOST=0`` keeps stock Celery's unbounded requeue.

When Redis cannot count the loss or keep the dead letter, the message is requeued as
stock Celery does: the poison task may run again, but nothing is lost. A child killed by
a revoke, a cancel or a cold shutdown is not the task's fault and is not counted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from billiard.common import human_status
from billiard.exceptions import WorkerLostError
from celery import signals
from celery.worker import state as worker_state

from appliance.broker import deadletter
from appliance.config.settings import get_settings
from appliance.core.keys import LOST_KEY_PREFIX
from appliance.core.text import one_line
from appliance.records import signals as record_signals
from appliance.records import store as records
from appliance.worker.consumer import raw_of
from appliance.worker.stats import CountingRequest, counters

logger = logging.getLogger("appliance.worker_lost")

# Long enough to outlast a redelivery that waits behind a deep queue (a requeued message
# goes to the back of its queue); the key exists only for tasks that lost a child.
LOST_KEY_TTL_SECONDS = 7 * 24 * 3600

SETTING = "APPLIANCE_MAX_WORKER_LOST"

# billiard: "Worker exited prematurely: signal 9 (SIGKILL) Job: 3."
_BILLIARD_STATUS = re.compile(r"exited prematurely: (.+?)(?: Job: \d+)?\.?$")


def lost_key(task_id: str) -> str:
    return LOST_KEY_PREFIX + task_id


def count_loss(client: Any, task_id: str, ttl: int = LOST_KEY_TTL_SECONDS) -> int:
    """Count one more lost child for *task_id*; return the count so far."""
    pipe = client.pipeline(transaction=True)
    pipe.incr(lost_key(task_id))
    pipe.expire(lost_key(task_id), ttl)
    losses, _ = pipe.execute()
    return int(losses)


def forget_losses(client: Any, task_id: str) -> None:
    """Start over: a dead letter requeued by an operator gets the whole bound again."""
    client.delete(lost_key(task_id))


def gives_up(losses: int, limit: int) -> bool:
    """Whether *losses* lost children reach the bound (0 = never give up)."""
    return limit > 0 and losses >= limit


def child_status(exc: BaseException | None) -> str:
    """How the child ended, as billiard says it: 'signal 9 (SIGKILL)', 'exitcode 3'."""
    if isinstance(exc, SystemExit):
        code = exc.code
        return str(human_status(0 if code is None else code if isinstance(code, int) else 1))
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    text = str(exc or "").strip()
    match = _BILLIARD_STATUS.search(text)
    if match:
        return match.group(1)
    return text or type(exc).__name__


def give_up_reason(status: str, losses: int, limit: int) -> str:
    """The FAILURE error and dead-letter reason of a task stopped at the bound."""
    return (
        f"WorkerLostError: the pool child running it was lost {losses} times "
        f"(last: {status}); not redelivered, dead-lettered ({SETTING}={limit})"
    )


def requeue_reason(status: str, losses: int, limit: int) -> str:
    """The RETRY error of a task requeued after a lost child."""
    bound = f"{losses} of {limit}" if limit > 0 else f"{losses}, no bound"
    return f"WorkerLostError: the pool child running it was lost ({status}); requeued ({bound})"


def _unwrap(exc: Any) -> Any:
    return getattr(exc, "exc", exc)  # billiard's ExceptionWithTraceback


class Request(CountingRequest):
    """Celery's Request (counting outcomes) with a bound on redeliveries after lost children."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = _unwrap(getattr(exc_info, "exception", None))
        if not self._would_requeue_lost_child(exc):
            return super().on_failure(
                exc_info, send_failed_event=send_failed_event, return_ok=return_ok
            )
        status, limit = child_status(exc), get_settings().max_worker_lost
        try:
            with self._message.channel.conn_or_acquire() as client:
                losses = count_loss(client, self.id)
        except Exception as error:
            logger.warning(
                "pool child lost running %s[%s] (%s); requeued, the loss was not counted (%s)",
                self.name,
                self.id,
                status,
                one_line(error),
            )
            return super().on_failure(
                exc_info, send_failed_event=send_failed_event, return_ok=return_ok
            )
        if gives_up(losses, limit):
            if self._success_stored():
                # Stored SUCCESS, then died: Celery acks it without running it again.
                return super().on_failure(
                    exc_info, send_failed_event=send_failed_event, return_ok=return_ok
                )
            if self._dead_letter(status, losses, limit):
                return None
        reason = requeue_reason(status, losses, limit)
        logger.warning("%s[%s]: %s", self.name, self.id, reason)
        retries = int(self._request_dict.get("retries") or 0)
        name, task_id = self.name, self.id
        record_signals.guarded(
            lambda url: records.record_retry(
                url, task_id=task_id, name=name, error=reason, retries=retries
            )
        )()
        # return_ok: the line above replaces Celery's "Task handler raised error" traceback;
        # the message is requeued by Celery exactly as without this class.
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=True)

    def _would_requeue_lost_child(self, exc: Any) -> bool:
        """A lost child that stock Celery would answer with a requeue."""
        if not isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            return False
        if self._already_cancelled or self._already_revoked or worker_state.should_terminate:
            return False  # killed by us, not by the task
        task = self.task
        if getattr(task, "retry_on_worker_lost", False):
            return False  # Celery retries it itself, bounded by max_retries
        return bool(task.acks_late and task.reject_on_worker_lost)

    def _success_stored(self) -> bool:
        check = getattr(self, "_success_was_stored", None)  # Celery 5.7 has it
        if check is None:
            return False
        try:
            return bool(check())
        except Exception:
            return False

    def _dead_letter(self, status: str, losses: int, limit: int) -> bool:
        """Keep the message as a dead letter, fail the task, ack; False if it was not kept."""
        reason = give_up_reason(status, losses, limit)
        raw, well_formed = raw_of(self._message)
        queue = (self.delivery_info or {}).get("routing_key")
        letter = deadletter.make(raw, reason, queue, self.id, self.name, requeueable=well_formed)
        try:
            with self._message.channel.conn_or_acquire() as client:
                deadletter.store(client, letter)
                forget_losses(client, self.id)
        except Exception as error:
            logger.error(
                "%s[%s]: %s; but the dead letter could not be stored (%s), so it is requeued",
                self.name,
                self.id,
                reason,
                one_line(error),
            )
            return False
        logger.error("%s[%s]: %s", self.name, self.id, reason)
        worker_state.task_ready(self)
        self._fail(WorkerLostError(reason.removeprefix("WorkerLostError: ")))
        self.acknowledge()
        counters.count("failed", reason)
        return True

    def _fail(self, exc: WorkerLostError) -> None:
        """The FAILURE result (for waiting callers) and the task_failure signal (records)."""
        try:
            self.task.backend.mark_as_failure(
                self.id, exc, request=self._context, store_result=self.store_errors
            )
        except Exception as error:
            logger.warning(
                "%s[%s]: FAILURE result not stored (%s)", self.name, self.id, one_line(error)
            )
        self.task.request_stack.push(self._context)
        try:
            signals.task_failure.send(
                sender=self.task,
                task_id=self.id,
                exception=exc,
                args=self.args,
                kwargs=self.kwargs,
                traceback=None,
                einfo=None,
            )
        finally:
            self.task.request_stack.pop()
