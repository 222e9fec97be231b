"""Publishing from a submitting process: its own connection pool, and what a refused or
unanswered publish means for the caller."""

from __future__ import annotations

import os
from typing import Any

from appliance.core import constants as C


class NoAnswerError(Exception):
    """Redis took the command but did not answer in time: it may still execute it."""


def _give_up_on_timeout(exc: BaseException, interval: float) -> None:
    """kombu's errback between publish attempts: retry a refused or reset connection,
    never a timeout. A timed-out LPUSH may sit unread in the socket of a paused or
    overloaded Redis and run later; each retry would queue one more copy."""
    import redis

    if isinstance(exc, (redis.TimeoutError, TimeoutError)):
        raise NoAnswerError(str(exc))


# Publishing connections per (process, broker URL): reads give up after
# PUBLISH_SOCKET_TIMEOUT, not the worker's REDIS_SOCKET_TIMEOUT.
_publish_pools: dict[tuple[int, str], Any] = {}


def publish(
    app: Any, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
    from appliance.broker import reach

    reach.reaching()
    key = (os.getpid(), str(app.conf.broker_url))
    pool = _publish_pools.get(key)
    if pool is None:
        timeouts = {"socket_timeout": C.PUBLISH_SOCKET_TIMEOUT}
        connection = app.connection_for_write(transport_options=timeouts)
        pool = _publish_pools.setdefault(key, connection.Pool(limit=app.conf.broker_pool_limit))
    policy = dict(app.conf.task_publish_retry_policy, errback=_give_up_on_timeout)
    from appliance.broker.result_backend import no_subscription

    # No result subscription at publish: `wait` subscribes when it is called.
    with pool.acquire(block=True) as connection, no_subscription():
        app.send_task(
            name, args=args, kwargs=kwargs, connection=connection, retry_policy=policy, **options
        )


def publish_fix(reason: str, url: str | None = None, exc: BaseException | None = None) -> str:
    """The fix for a refused publish, from Redis's reason and where the URL came from."""
    from appliance.broker import reach

    origin = reach.origin_of(url) if url else None
    if reach.is_auth_error(exc if exc is not None else reason):
        return reach.auth_fix(origin)
    if "MISCONF" in reason:
        # Redis could not write its AOF/RDB file (disk full or failing) and refuses writes.
        return (
            "Redis cannot write its persistence file to disk (disk full or failing) and "
            "refuses writes until it can: free space on the disk of Redis's `dir` (its log "
            "names the error); it accepts writes again by itself"
        )
    if origin is not None and origin.kind != "setting":
        return reach.start_fix(origin)
    where = origin.source if origin is not None else "APPLIANCE_BROKER_URL"
    return f"check {where} and that redis-server is running and writable"
