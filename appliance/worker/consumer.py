"""The worker's consumer: messages Celery would drop go to the dead-letter store instead."""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from appliance.broker import deadletter
from appliance.worker.consumers import process as consumer_process

logger = logging.getLogger("appliance.deadletter")


def keep(client: Any, letter: deadletter.DeadLetter) -> None:
    """Store a dead letter and, with a task id, a FAILURE record; never raise."""
    task_id, task_name, reason = letter.task_id, letter.task_name, letter.reason
    try:
        deadletter.store(client, letter)
        logger.error("dead-lettered %s (%s): %s", letter.id, letter.queue, reason)
    except Exception as exc:
        logger.critical(
            "could not store dead letter %s (%s): %s; raw: %r",
            letter.id,
            reason,
            exc,
            letter.raw[:2000],
        )
    if task_id:
        from appliance.records import signals as record_signals
        from appliance.records import store as records

        record_signals.guarded(
            lambda url: records.record_failed(
                url,
                task_id=task_id,
                name=task_name or "",
                error=f"dead-lettered: {reason}",
                traceback=None,
            )
        )()


def raw_of(message: Any) -> tuple[bytes, bool]:
    """The message's bytes as they sat in Redis, and whether they form a kombu message."""
    payload = getattr(message, "_raw", None)
    if isinstance(payload, dict):
        return json.dumps(payload).encode(), True
    body = getattr(message, "body", b"")
    return (body if isinstance(body, bytes) else str(body).encode()), False


def _ids(message: Any) -> tuple[str | None, str | None]:
    headers = getattr(message, "headers", None) or {}
    return headers.get("id"), headers.get("task")


CELERY_CONTROL_STEP = "celery.worker.consumer.control:Control"
# Its remote control: a consumer process answers from a thread (the loop runs its task).
CONTROL_STEP = "appliance.worker.remote_control:Control"


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, dead-lettering what it cannot run before rejecting or acking it."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        """Celery's consumer steps, with the appliance's remote-control step."""

        default_steps = [
            CONTROL_STEP if step == CELERY_CONTROL_STEP else step
            for step in CeleryConsumer.Blueprint.default_steps
        ]

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """In a consumer process (tasks run inline in the event loop's thread) ack now:
        Celery's hub.call_soon from that thread wakes nobody, so with the prefetch slot
        still taken the loop would sleep in its poll (up to 1 s) before acking."""
        if not consumer_process.current().is_consumer:
            return super().call_soon_ack(p, *args, **kwargs)
        p(*args, **kwargs)  # errors take the path they take from hub.call_soon
        return p

    def _keep(self, message: Any, reason: str) -> None:
        raw, well_formed = raw_of(message)
        task_id, name = _ids(message)
        queue = (getattr(message, "delivery_info", None) or {}).get("routing_key")
        try:
            client = self.connection.default_channel.client
        except Exception as exc:
            logger.critical("no Redis client for the dead letter (%s); raw: %r", exc, raw[:2000])
            return
        keep(client, deadletter.make(raw, reason, queue, task_id, name, requeueable=well_formed))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> Any:
        _id, name = _ids(message)
        self._keep(message, f"unknown task name {name!r}")
        return super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> Any:
        self._keep(message, "not a task message (no task header)")
        return super().on_unknown_message(body, message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> Any:
        self._keep(message, f"invalid task message ({type(exc).__name__}: {exc})")
        return super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> Any:
        self._keep(message, f"undecodable body ({type(exc).__name__}: {exc})")
        return super().on_decode_error(message, exc)
