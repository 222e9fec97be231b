"""When the consumers' parent kills a consumer: its task is past its hard time limit, it is
still busy at the stop timeout, or its task was revoked with --terminate.

Each kill is SIGKILL with a :class:`~appliance.worker.consumers.protocol.KilledFor` reason;
what becomes of the message is decided when the consumer is reaped
(:func:`appliance.worker.consumers.settle.settle_exit`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.core import constants as C
from appliance.core import keys
from appliance.worker.consumers.children import ConsumerProcess
from appliance.worker.consumers.protocol import KilledFor

logger = logging.getLogger("appliance.consumers")

# A consumer past its hard time limit is killed after this grace (its own soft limit and
# Celery's handling of it come first).
HARD_LIMIT_GRACE_SECONDS = 1.0
# How often the parent looks for revokes with --terminate of the tasks it runs.
TERMINATE_CHECK_SECONDS = 0.5


def enforce_hard_limits(consumers: Iterable[ConsumerProcess], now: float) -> None:
    for consumer in consumers:
        running = consumer.running
        if running is None or not running.hard_limit or consumer.killed_for:
            continue
        if now - running.since > running.hard_limit + HARD_LIMIT_GRACE_SECONDS:
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]: killing consumer %d (pid %d)",
                running.hard_limit,
                running.name,
                running.task_id,
                consumer.index,
                consumer.pid,
            )
            consumer.kill(KilledFor.TIME_LIMIT)


def enforce_stop_timeout(consumers: Iterable[ConsumerProcess], stop_timeout: float) -> None:
    """The stop timeout is over: kill every consumer still there."""
    for consumer in consumers:
        if consumer.killed_for is None:
            logger.warning(
                "consumer %d (pid %d) did not stop within %gs (stop timeout); killing it",
                consumer.index,
                consumer.pid,
                stop_timeout,
            )
            consumer.kill(KilledFor.STOP)


def request_terminate(redis: Any, task_ids: Iterable[str], now: float | None = None) -> None:
    """Ask the consumers' parents to kill the consumer running any of *task_ids*: the
    terminate requests :class:`TerminateRequests` reads (written by ``operations.revoke``
    with --terminate, and by a consumer's pool for Celery's ``revoke(terminate=True)``).
    Raises redis-py's errors."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=True)
    pipe.zadd(keys.TERMINATE_KEY, dict.fromkeys(task_ids, now))
    pipe.zremrangebyscore(keys.TERMINATE_KEY, 0, now - C.TERMINATE_KEEP_SECONDS)
    pipe.execute()


@dataclass
class TerminateRequests:
    """Revokes with --terminate (operations.revoke) of the tasks the consumers run, read
    from Redis every TERMINATE_CHECK_SECONDS through *redis* (a redis-py client), if any."""

    redis: Any = None
    _next_check: float = 0.0

    def enforce(self, consumers: Iterable[ConsumerProcess], now: float) -> None:
        if self.redis is None or now < self._next_check:
            return
        self._next_check = now + TERMINATE_CHECK_SECONDS
        busy = [c for c in consumers if c.running and not c.killed_for]
        if not busy:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for consumer in busy:
                pipe.zscore(keys.TERMINATE_KEY, consumer.running.task_id)  # type: ignore[union-attr]
            scores = pipe.execute()
        except Exception as exc:
            logger.debug("terminate requests not read: %s", exc)
            return
        for consumer, score in zip(busy, scores, strict=True):
            if score is not None and consumer.running is not None:
                logger.warning(
                    "terminating %s[%s] (revoked with --terminate): killing consumer %d (pid %d)",
                    consumer.running.name,
                    consumer.running.task_id,
                    consumer.index,
                    consumer.pid,
                )
                consumer.kill(KilledFor.REVOKED)
