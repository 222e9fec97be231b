"""Celery's worker events on the consumers topology: the event heartbeat from a thread.

Every worker runs Celery's Events step (appliance/worker/launch.py, worker_argv): the
events worker-online, worker-heartbeat (every 2 s) and worker-offline, and task events
when APPLIANCE_TASK_EVENTS or `celery control enable_events` ask for them. Celery sends
the heartbeat from a timer of the consumer's event loop. A consumer process runs its
tasks in that loop's thread, so a task longer than two heartbeats would make its node
look offline to Flower and `celery events` (they drop a node after two missed beats);
there this step sends them from a thread instead, as the appliance's own heartbeat
does (appliance/worker/supervision.py). The event dispatcher publishes under its own
lock, on its own connection, so the thread and the loop do not share a socket unguarded.

A consumer that retires (recycling) sends no worker-offline: its successor, started
ahead of it, already beats under the same node name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps

from appliance.worker.consumers import process as consumer_process
from appliance.worker.repeat import Repeating

HEART_STEP = "celery.worker.consumer.heart:Heart"


class ThreadTimer:
    """The two calls celery.worker.heartbeat.Heart makes of its timer, on threads."""

    def call_repeatedly(
        self, seconds: float, fun: Callable[..., Any], args: tuple[Any, ...] = (), *_: Any
    ) -> Repeating:
        return Repeating(seconds, fun, args, name="event-heartbeat")

    def cancel(self, tref: Repeating) -> None:
        tref.cancel()


class ConsumerHeartStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """In a consumer process: Celery's event heartbeat moved off the event loop."""

    requires = (HEART_STEP,)

    def start(self, consumer: Any) -> None:
        heart = getattr(consumer, "heart", None)
        if heart is None or not consumer_process.current().is_consumer:
            return
        if heart.tref is not None:  # armed on the loop's timer by Heart.start
            heart.timer.cancel(heart.tref)
            heart.tref = ThreadTimer().call_repeatedly(
                heart.interval, heart._send, ("worker-heartbeat",)
            )
        # Heart.stop cancels through it; Heart.start (events re-enabled) re-arms on it.
        heart.timer = ThreadTimer()

    def shutdown(self, consumer: Any) -> None:
        from appliance.worker.consumers.pool import retiring

        heart = getattr(consumer, "heart", None)
        if heart is None or not consumer_process.current().is_consumer or not retiring():
            return
        # Heart's own shutdown would send worker-offline for a node that lives on.
        if heart.tref is not None:
            heart.timer.cancel(heart.tref)
            heart.tref = None
        consumer.heart = None


def install(app: Any) -> None:
    """Add the step to the worker's consumer; call before the worker starts."""
    app.steps["consumer"].add(ConsumerHeartStep)
