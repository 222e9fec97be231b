"""What the consumers' parent does with the message of a consumer that ended mid-task.

The parent (:mod:`appliance.worker.consumers.supervisor`) knows, from its consumers' reports, which
message each one holds. When one dies, is killed at its hard time limit or at the stop
timeout, these functions settle that message at once, with the same outcomes as
prefork's main process (:mod:`appliance.worker.lost` for lost children). Each opens its
own short-lived connection: the parent keeps none open while it forks. A Redis that
cannot be reached leaves the message unacked, so Redis hands it out again after the
visibility timeout: slower, never lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.exceptions import TimeLimitExceeded

from appliance.broker import deadletter
from appliance.config.settings import get_settings
from appliance.core.text import one_line
from appliance.records import signals as record_signals
from appliance.records import store as records
from appliance.worker.lost import (
    count_loss,
    forget_losses,
    give_up_reason,
    gives_up,
    requeue_reason,
)

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
    limit = get_settings().max_worker_lost
    if _success_stored(task_id):
        # Stored SUCCESS, then died before the ack: done, as Celery treats it.
        try:
            with _channel() as channel:
                _ack(channel, tag)
        except Exception as exc:
            logger.warning("%s[%s]: message not acked (%s)", name, task_id, one_line(exc))
        return
    try:
        with _channel() as channel:
            losses = count_loss(channel.client, task_id)
            held = _held(channel, tag)
            if gives_up(losses, limit) and held is not None:
                reason = give_up_reason(status, losses, limit)
                raw, queue = held
                letter = deadletter.make(raw, reason, queue, task_id, name, requeueable=True)
                deadletter.store(channel.client, letter)
                forget_losses(channel.client, task_id)
                logger.error("%s[%s]: %s", name, task_id, reason)
                _fail(task_id, name, WorkerLostError(reason.removeprefix("WorkerLostError: ")),
                      reason)  # fmt: skip
                _ack(channel, tag)
                return
    except Exception as exc:
        logger.warning(
            "consumer lost running %s[%s] (%s); the loss was not counted (%s)",
            name,
            task_id,
            status,
            one_line(exc),
        )
        requeue(tag, f"{name}[{task_id}] lost its consumer")
        return
    reason = requeue_reason(status, losses, limit)
    logger.warning("%s[%s]: %s", name, task_id, reason)
    retries = 0
    record_signals.guarded(
        lambda url: records.record_retry(
            url, task_id=task_id, name=name, error=reason, retries=retries
        )
    )()
    requeue(tag, f"{name}[{task_id}] lost its consumer")
