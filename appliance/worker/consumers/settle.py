"""What the consumers' parent does with the message of a consumer that ended mid-task.

The parent (:mod:`appliance.worker.consumers.supervisor`) knows, from its consumers' reports,
which message each one holds. When one dies, is killed at its hard time limit or at the
stop timeout, :func:`settle_exit` settles that message at once, with the same outcomes as
prefork's main process (a lost consumer by the same policy as a lost pool child,
:func:`appliance.worker.lost.settle_lost`). Each settlement opens its own short-lived
connection: the parent keeps none open while it forks. A Redis that cannot be reached
leaves the message unacked, so Redis hands it out again after the visibility timeout:
slower, never lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cached_property
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.exceptions import TimeLimitExceeded

from appliance.broker import deadletter
from appliance.config.settings import get_settings
from appliance.core.text import one_line
from appliance.records import signals as record_signals
from appliance.records import store as records
from appliance.worker.consumers.children import ConsumerProcess
from appliance.worker.consumers.protocol import KilledFor
from appliance.worker.lost import Settled, count_loss, forget_losses, settle_lost

logger = logging.getLogger("appliance.consumers")


@contextmanager
def _channel() -> Iterator[Any]:
    from appliance.celery_app import app

    with app.connection_for_write() as conn:
        yield conn.default_channel


def _ack(channel: Any, tag: str) -> None:
    pipe = channel.client.pipeline(transaction=True)
    pipe.zrem(channel.unacked_index_key, tag)
    pipe.hdel(channel.unacked_key, tag)
    pipe.execute()


def _held(channel: Any, tag: str) -> tuple[bytes, str | None] | None:
    """The message under *tag* as it sat on its queue, and its queue."""
    raw = channel.client.hget(channel.unacked_key, tag)
    if not raw:
        return None
    message, _exchange, routing_key = json.loads(raw)
    return json.dumps(message).encode(), routing_key


def _success_stored(task_id: str) -> bool:
    from appliance.celery_app import app

    try:
        meta = app.backend.get_task_meta(task_id)
    except Exception:
        return False
    return bool(meta and meta.get("status") == "SUCCESS")


def _fail(task_id: str, name: str, exc: BaseException, error: str) -> None:
    """A FAILURE result (for waiting callers) and record."""
    from appliance.celery_app import app

    try:
        app.backend.mark_as_failure(task_id, exc)
    except Exception as err:
        logger.warning("%s[%s]: FAILURE result not stored (%s)", name, task_id, one_line(err))
    record_signals.guarded(
        lambda url: records.record_failed(
            url, task_id=task_id, name=name, error=error, traceback=None
        )
    )()


def requeue(tag: str, why: str) -> None:
    """Put the message under *tag* back on its queue now (not the task's fault)."""
    try:
        with _channel() as channel:
            channel.qos.restore_by_tag(tag)
    except Exception as exc:
        logger.warning(
            "message %s (%s) not requeued now (%s); Redis hands it out again after the "
            "visibility timeout",
            tag,
            why,
            one_line(exc),
        )
        return
    logger.info("requeued message %s (%s)", tag, why)


def hard_time_limit_exceeded(tag: str, task_id: str, name: str, limit: float) -> None:
    """The consumer was killed at the task's hard limit: FAILURE, and the message acked."""
    error = f"TimeLimitExceeded: hard time limit ({limit:g}s) exceeded"
    _fail(task_id, name, TimeLimitExceeded(limit), error)
    try:
        with _channel() as channel:
            _ack(channel, tag)
    except Exception as exc:
        logger.warning("%s[%s]: message not acked (%s)", name, task_id, one_line(exc))


def terminated(tag: str, task_id: str, name: str) -> None:
    """Killed for a revoke with --terminate: REVOKED, and the message acked."""
    from appliance.celery_app import app

    reason = "terminated by operator"
    try:
        app.backend.mark_as_revoked(task_id, reason)
    except Exception as exc:
        logger.warning("%s[%s]: REVOKED result not stored (%s)", name, task_id, one_line(exc))
    record_signals.guarded(
        lambda url: records.record_revoked(url, task_id=task_id, name=name, reason=reason)
    )()
    try:
        with _channel() as channel:
            _ack(channel, tag)
    except Exception as exc:
        logger.warning("%s[%s]: message not acked (%s)", name, task_id, one_line(exc))


def consumer_lost(tag: str, task_id: str, name: str, status: str) -> None:
    """The consumer died in the task: requeue it, or dead-letter it at the bound."""
    with ExitStack() as stack:
        lost = _LostConsumer(stack, tag, task_id, name)
        settled = settle_lost(lost, status, get_settings().max_worker_lost)
        if settled is Settled.SUCCEEDED:
            lost.ack()
    if settled in (Settled.UNCOUNTED, Settled.REQUEUE):
        requeue(tag, f"{name}[{task_id}] lost its consumer")


class _LostConsumer:
    """A task whose consumer died, settled by the parent through one connection, opened
    when first needed and closed by *stack*."""

    process = "consumer"
    retries = 0  # the parent knows no more of the task than its consumer's report

    def __init__(self, stack: ExitStack, tag: str, task_id: str, name: str) -> None:
        self._stack = stack
        self.tag, self.task_id, self.name = tag, task_id, name

    @cached_property
    def _channel(self) -> Any:
        return self._stack.enter_context(_channel())

    def success_stored(self) -> bool:
        return _success_stored(self.task_id)

    def count_loss(self) -> int:
        return count_loss(self._channel.client, self.task_id)

    def keep_dead_letter(self, reason: str) -> bool:
        held = _held(self._channel, self.tag)
        if held is None:
            return False  # no longer unacked: nothing to keep
        raw, queue = held
        letter = deadletter.make(raw, reason, queue, self.task_id, self.name, requeueable=True)
        deadletter.store(self._channel.client, letter)
        forget_losses(self._channel.client, self.task_id)
        return True

    def give_up(self, reason: str) -> None:
        error = WorkerLostError(reason.removeprefix("WorkerLostError: "))
        _fail(self.task_id, self.name, error, reason)
        self.ack()

    def ack(self) -> None:
        try:
            _ack(self._channel, self.tag)
        except Exception as exc:
            logger.warning("%s[%s]: message not acked (%s)", self.name, self.task_id, one_line(exc))


def settle_exit(consumer: ConsumerProcess, code: int, how: str) -> None:
    """Settle what a consumer that ended (exit *code*, *how* in billiard's words) ran and
    held: by why the parent killed it, if it did."""
    running, held = consumer.running, consumer.held
    if running is not None:
        if consumer.killed_for is KilledFor.TIME_LIMIT:
            hard_time_limit_exceeded(running.tag, running.task_id, running.name,
                                     running.hard_limit)  # fmt: skip
        elif consumer.killed_for is KilledFor.REVOKED:
            terminated(running.tag, running.task_id, running.name)
        elif consumer.killed_for is KilledFor.STOP:
            requeue(running.tag, f"{running.name}[{running.task_id}] killed at stop")
        else:
            consumer_lost(running.tag, running.task_id, running.name, how)
    if held is not None and code < 0 and (running is None or held != running.tag):
        # Killed: it could not restore what its last ack fetched, as a stop does.
        requeue(held, "a message its ack had fetched")
