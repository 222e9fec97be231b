"""The worker's supervision step: systemd notify, a watchdog that means progress, heartbeats.

A consumer bootstep whose timers run on the consumer's own event loop (the kombu hub):
a wedged loop fires no timer, so it sends no WATCHDOG=1 and writes no heartbeat. Each
ping also checks that the broker connection is making progress: a BRPOP that has had
no reply for longer than its server-side timeout plus a grace means a dead connection,
and the pings stop until the consumer recovers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from appliance.core import constants as C
from appliance.records import signals as record_signals
from appliance.worker import heartbeat
from appliance.worker.consumers import process as consumer_process
from appliance.worker.repeat import Repeating
from appliance.worker.sdnotify import Notifier, scrub_child_environment, watchdog_interval
from appliance.worker.stats import counters

logger = logging.getLogger("appliance.worker")

# Failure ratios are reported over this recent window (the health check's failure_pct).
FAILURE_WINDOW_SECONDS = 15 * 60

# A BRPOP is sent with a 1 s server-side timeout; allow this much more before we call
# the connection stuck (kombu itself drops it after brpop_timeout + health_check_interval).
BRPOP_GRACE_SECONDS = 5.0


@dataclass
class Supervision:
    """Captured once in the main process before the pool forks (children see none of it);
    a consumer process has its own (see :func:`current`)."""

    group: str = "default"
    queues: list[str] = field(default_factory=list)
    broker_url: str = ""
    stop_timeout: int = 0
    notifier: Notifier = field(default_factory=lambda: Notifier(""))
    watchdog: float | None = None
    started_at: float = field(default_factory=time.time)

    @classmethod
    def capture(
        cls, *, group: str, queues: list[str], broker_url: str, stop_timeout: int
    ) -> Supervision:
        found = cls(
            group=group,
            queues=queues,
            broker_url=broker_url,
            stop_timeout=stop_timeout,
            notifier=Notifier(),
            watchdog=watchdog_interval(),
        )
        scrub_child_environment()
        return found


# The unit's, captured by the worker's main process (appliance.worker.launch.run_worker).
supervision = Supervision()


def current() -> Supervision:
    """This process's supervision: a consumer process's own (its notifier reports to the
    consumers' parent, which speaks to systemd), else the unit's."""
    return consumer_process.current().supervision or supervision


def broker_progressing(consumer: Any, now: float | None = None) -> bool:
    """False when the consumer is disconnected or a BRPOP is overdue (a dead socket)."""
    connection = getattr(consumer, "connection", None)
    if connection is None or not getattr(connection, "connected", False):
        return False
    cycle = getattr(getattr(connection, "transport", None), "cycle", None)
    now = time.monotonic() if now is None else now
    for channel in getattr(cycle, "_channels", ()) or ():
        if not getattr(channel, "_in_poll", None):
            continue  # no BRPOP out (all prefetch slots busy, or ack-and-fetch at work)
        sent_at = getattr(channel, "_brpop_sent_at", None)
        timeout = getattr(channel, "brpop_timeout", None) or 1
        if sent_at is not None and now - sent_at > timeout + BRPOP_GRACE_SECONDS:
            return False
    return True


def status_line(hostname: str) -> str:
    line = (
        f"{hostname}: consuming {','.join(current().queues)}; "
        f"done {counters.done} (failed {counters.failed}, retried {counters.retried}), "
        f"active {counters.active}"
    )
    if counters.last_error:
        line += f"; last error: {counters.last_error[:120]}"
    return line


class SupervisionStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """READY/WATCHDOG/STATUS to systemd and a heartbeat key to Redis, from the event loop."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._timers: dict[str, Any] = {}
        self._client: redis.Redis | None = None
        self._hostname = consumer.hostname
        # (time, done, failed) at each heartbeat, for counts over the recent window.
        self._samples: deque[tuple[float, int, int]] = deque()

    def start(self, consumer: Any) -> None:
        self._load_revokes()
        supervision = current()
        # Tasks has started consuming: that is what READY means here.
        supervision.notifier.ready(status_line(self._hostname))
        if consumer_process.current().is_consumer:
            # A consumer process runs its tasks in the loop's thread: a long task would
            # hold the heartbeat back past its TTL, and the node would look gone.
            self._beat_thread(consumer)
        else:
            self._every(consumer, "heartbeat", C.HEARTBEAT_INTERVAL, self._beat)
        if supervision.watchdog:
            self._every(consumer, "watchdog", supervision.watchdog, self._ping)

    def _beat_thread(self, consumer: Any) -> None:
        self._beats = Repeating(
            C.HEARTBEAT_INTERVAL, self._beat, (consumer,), name="heartbeat", now=True
        )

    def _every(self, consumer: Any, name: str, seconds: float, fun: Any) -> None:
        """Run *fun* now and then every *seconds* on the event loop.

        Re-armed after each run rather than kombu's call_repeatedly, which skips a run
        when the loop wakes a millisecond early and so can double the gap.
        """

        def run() -> None:
            try:
                fun(consumer)
            finally:
                if name in self._timers:
                    self._timers[name] = consumer.timer.call_after(seconds, run)

        self._timers[name] = None
        run()

    def stop(self, consumer: Any) -> None:
        beats = getattr(self, "_beats", None)
        if beats is not None:
            beats.cancel()
        for tref in self._timers.values():
            if tref is not None:
                tref.cancel()
        self._timers.clear()

    def shutdown(self, consumer: Any) -> None:
        from appliance.worker.consumers.pool import retiring

        self.stop(consumer)
        if retiring():
            return  # the unit lives on: its successor beats under the same key
        with contextlib.suppress(redis.RedisError):
            heartbeat.remove(self._redis(), self._hostname)

    def _load_revokes(self) -> None:
        """Honour revokes issued while this worker was not running (kept in Redis)."""
        from appliance.operations import persisted_revokes

        try:
            ids = persisted_revokes(self._redis())
        except redis.RedisError as exc:
            logger.warning("persisted revokes not loaded: %s", exc)
            return
        for task_id in ids:
            worker_state.revoked.add(task_id)

    def _ping(self, consumer: Any) -> None:
        if broker_progressing(consumer):
            current().notifier.watchdog()
        else:
            logger.warning("broker connection is not making progress: watchdog ping withheld")

    def _redis(self) -> redis.Redis:
        if self._client is None:
            from appliance.broker.admin import connect
            from appliance.config.settings import get_settings

            # Through Sentinel for sentinel:// URLs: heartbeats follow a failover.
            self._client = connect(
                current().broker_url,
                get_settings().redis_sentinel_master,
                socket_timeout=2,
                socket_connect_timeout=2,
                health_check_interval=C.REDIS_HEALTH_CHECK_INTERVAL,
            )
        return self._client

    def _beat(self, consumer: Any) -> None:
        supervision = current()
        supervision.notifier.status(status_line(self._hostname))
        now = time.monotonic()
        self._samples.append((now, counters.done, counters.failed))
        while now - self._samples[0][0] > FAILURE_WINDOW_SECONDS:
            self._samples.popleft()
        since, done_then, failed_then = self._samples[0]
        beat = heartbeat.WorkerHeartbeat(
            hostname=self._hostname,
            pid=os.getpid(),
            group=supervision.group,
            queues=supervision.queues,
            started_at=supervision.started_at,
            updated_at=heartbeat.now(),
            succeeded=counters.succeeded,
            failed=counters.failed,
            retried=counters.retried,
            active=counters.active,
            reserved=len(worker_state.reserved_requests),
            rss_kib=heartbeat.current_rss_kib(),
            record_write_errors=record_signals.write_error_count(),  # incl. pool children
            last_error=counters.last_error,
            window_done=counters.done - done_then,
            window_failed=counters.failed - failed_then,
            window_seconds=int(now - since),
        )
        try:
            heartbeat.publish(self._redis(), beat)
        except redis.RedisError as exc:
            logger.warning("heartbeat not written: %s", exc)


def on_shutting_down(**_: Any) -> None:
    """SIGTERM: tell systemd we are stopping and may take up to the stop timeout to drain."""
    supervision = current()
    extend = supervision.stop_timeout * 1_000_000 if supervision.stop_timeout else None
    active = len(worker_state.active_requests)
    supervision.notifier.stopping(f"draining {active} running task(s)", extend_usec=extend)


def install(app: Any) -> None:
    """Add the step to the worker's consumer and hook shutdown; call before the worker starts."""
    from celery import signals

    app.steps["consumer"].add(SupervisionStep)
    signals.worker_shutting_down.connect(on_shutting_down, weak=False, dispatch_uid="appl-stop")
    signals.worker_process_init.connect(
        lambda **_: scrub_child_environment(), weak=False, dispatch_uid="appl-child-env"
    )
