"""A bound on redeliveries of a task whose process dies under it: no endless poison loop.

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
a revoke, a cancel or a cold shutdown is not the task's fault and is not counted. A task
that stored SUCCESS before its process died is done: acked, not counted.

:func:`settle_lost` is that policy for both topologies: prefork's main process applies it
to a lost pool child from :class:`Request`, the consumers' parent to a lost consumer
(:mod:`appliance.worker.consumers.settle`), each through its own :class:`LostTask`.
"""

from __future__ import annotations

import logging
import re
from enum import Enum
from typing import Any, Protocol

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
from appliance.worker.consumers import process as consumer_process
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


class LostTask(Protocol):
    """A task whose process died under it, as its topology settles it (:func:`settle_lost`)."""

    process: str  # what was lost, for the log: "pool child", "consumer"
    task_id: str
    name: str
    retries: int  # for its RETRY record

    def success_stored(self) -> bool:
        """It stored SUCCESS before its process died."""
        ...

    def count_loss(self) -> int:
        """One more loss counted in Redis (raises when it cannot be): the count so far."""
        ...

    def keep_dead_letter(self, reason: str) -> bool:
        """Its message stored as a dead letter and its losses forgotten; False when there is
        no message to keep (raises when the letter cannot be stored)."""
        ...

    def give_up(self, reason: str) -> None:
        """Its FAILURE result and record, and the ack of its message."""
        ...


class Settled(Enum):
    """What :func:`settle_lost` leaves its caller to do with the message."""

    SUCCEEDED = "succeeded"  # SUCCESS was stored before the loss: ack it, it is done
    UNCOUNTED = "uncounted"  # the loss could not be counted: requeue it, as stock Celery does
    REQUEUE = "requeue"  # counted below the bound, its RETRY record written: requeue it
    DEAD_LETTERED = "dead-lettered"  # at the bound: dead-lettered, failed and acked already


def settle_lost(task: LostTask, status: str, limit: int) -> Settled:
    """The bound on redeliveries (module docstring) for a lost *task* of either topology:
    *status* is how its process ended, *limit* APPLIANCE_MAX_WORKER_LOST."""
    if task.success_stored():
        return Settled.SUCCEEDED  # stored SUCCESS, then died before the ack: not run again
    try:
        losses = task.count_loss()
    except Exception as error:
        logger.warning(
            "%s lost running %s[%s] (%s); requeued, the loss was not counted (%s)",
            task.process,
            task.name,
            task.task_id,
            status,
            one_line(error),
        )
        return Settled.UNCOUNTED
    if gives_up(losses, limit):
        reason = give_up_reason(status, losses, limit)
        try:
            kept = task.keep_dead_letter(reason)
        except Exception as error:
            logger.error(
                "%s[%s]: %s; but the dead letter could not be stored (%s), so it is requeued",
                task.name,
                task.task_id,
                reason,
                one_line(error),
            )
            kept = False
        if kept:
            logger.error("%s[%s]: %s", task.name, task.task_id, reason)
            task.give_up(reason)
            return Settled.DEAD_LETTERED
    reason = requeue_reason(status, losses, limit)
    logger.warning("%s[%s]: %s", task.name, task.task_id, reason)
    task_id, name, retries = task.task_id, task.name, task.retries
    record_signals.guarded(
        lambda url: records.record_retry(
            url, task_id=task_id, name=name, error=reason, retries=retries
        )
    )()
    return Settled.REQUEUE


class Request(CountingRequest):
    """Celery's Request (counting outcomes) with a bound on redeliveries after lost children.

    On the consumers topology it also answers revokes that come through the consumer's
    mailbox thread (appliance/worker/consumers/mailbox.py) while the loop runs a task:
    :meth:`revoked` claims a request on its way to the pool, and :meth:`terminate` asks
    the consumers' parent to kill the consumer instead of acking from that thread.
    """

    # Checked by revoked() on its way to the pool: it runs unless that check found it
    # revoked. The mailbox thread adds ids to the revoked set before it reads this, and
    # this is set before the set is read, so each sees the other (one GIL): a revoke
    # either stops the request or finds it claimed (then it is running, not REVOKED).
    claimed = False

    def revoked(self) -> bool:
        if worker_state.requests.get(self.id) is self:  # reserved: execute_using_pool's check
            self.claimed = True
        return bool(super().revoked())

    def terminate(self, pool: Any, signal: Any = None) -> None:
        """A consumer runs the task in its event loop's thread: its pool asks the parent
        to kill it (which stores REVOKED, writes the record and acks), instead of Celery's
        SIGTERM to a pool child and REVOKED, ack and record from the calling thread."""
        if not consumer_process.current().is_consumer:
            super().terminate(pool, signal)
            return
        if self.time_start:
            pool.terminate_task(self.id)
        else:
            self._terminate_on_ack = pool, signal  # Celery terminates it once accepted

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = _unwrap(getattr(exc_info, "exception", None))
        if not self._would_requeue_lost_child(exc):
            return super().on_failure(
                exc_info, send_failed_event=send_failed_event, return_ok=return_ok
            )
        limit = get_settings().max_worker_lost
        settled = settle_lost(_LostPoolChild(self), child_status(exc), limit)
        if settled is Settled.DEAD_LETTERED:
            return None
        # Celery requeues the message exactly as without this class (or acks it, SUCCESS
        # stored). return_ok: settle_lost's line replaces Celery's "Task handler raised
        # error" traceback.
        return super().on_failure(
            exc_info,
            send_failed_event=send_failed_event,
            return_ok=return_ok or settled is Settled.REQUEUE,
        )

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

    def _success_was_stored(self) -> Any:
        """Celery's check (5.7), made once per loss: settle_lost asks first, and Celery's
        on_failure asks again to ack a task that stored SUCCESS."""
        if "_stored_success" not in self.__dict__:
            self._stored_success = super()._success_was_stored()
        return self._stored_success

    def _success_stored(self) -> bool:
        try:
            return bool(self._success_was_stored())
        except Exception:
            return False

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


class _LostPoolChild:
    """A prefork task whose pool child died, settled from the worker's main process
    through its Request (the message's own channel)."""

    process = "pool child"

    def __init__(self, request: Request) -> None:
        self.request = request
        self.task_id: str = request.id
        self.name: str = request.name
        self.retries = int(request._request_dict.get("retries") or 0)

    def success_stored(self) -> bool:
        return self.request._success_stored()

    def count_loss(self) -> int:
        with self.request._message.channel.conn_or_acquire() as client:
            return count_loss(client, self.task_id)

    def keep_dead_letter(self, reason: str) -> bool:
        request = self.request
        raw, well_formed = raw_of(request._message)
        queue = (request.delivery_info or {}).get("routing_key")
        letter = deadletter.make(
            raw, reason, queue, self.task_id, self.name, requeueable=well_formed
        )
        with request._message.channel.conn_or_acquire() as client:
            deadletter.store(client, letter)
            forget_losses(client, self.task_id)
        return True

    def give_up(self, reason: str) -> None:
        request = self.request
        worker_state.task_ready(request)
        request._fail(WorkerLostError(reason.removeprefix("WorkerLostError: ")))
        request.acknowledge()
        counters.count("failed", reason)
