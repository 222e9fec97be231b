"""Celery's Redis result backends, able to publish without subscribing to the result.

Stock Celery subscribes the publishing process to a task's result channel before it
publishes the task (``on_task_call``), retrying up to 20 times with a socket timeout
each: against a paused or overloaded Redis, ``appliance submit`` hung for minutes
before it even tried to publish. A caller that waits subscribes anyway
(``AsyncResult.get`` subscribes, then reads a result already stored), so
:func:`appliance.api.submit` publishes inside :func:`no_subscription`. Everything else
(workflows, tasks published by tasks) keeps Celery's behaviour. `install()` points
Celery's redis/rediss/sentinel backend aliases at these subclasses, as broker_transport
does for kombu's transports. They also store a state in one round trip instead of two.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from celery.app import backends
from celery.backends import redis as celery_redis
from celery.exceptions import BackendStoreError
from celery.states import FAILURE, READY_STATES

from appliance.broker import scripts

_subscribe = ContextVar("appliance_subscribe_on_publish", default=True)


@contextlib.contextmanager
def no_subscription() -> Iterator[None]:
    """Publish in this block without subscribing to the results (this thread/context only)."""
    token = _subscribe.set(False)
    try:
        yield
    finally:
        _subscribe.reset(token)


class _SubscribeOnWait:
    def on_task_call(self, producer: Any, task_id: str) -> None:
        if _subscribe.get():
            super().on_task_call(producer, task_id)  # type: ignore[misc]


def databases_on_one_server(broker_url: str, backend_url: str) -> tuple[int, int] | None:
    """(result db, broker db) when both URLs reach the same Redis server as the same user."""
    from urllib.parse import urlsplit

    broker, backend = urlsplit(broker_url), urlsplit(backend_url)
    if broker.scheme not in ("redis", "rediss") or backend.scheme != broker.scheme:
        return None
    same = ("hostname", "port", "username", "password", "query")
    if any(getattr(broker, a) != getattr(backend, a) for a in same):
        return None

    def db(path: str) -> int:
        return int(path.strip("/") or 0)

    try:
        return db(backend.path), db(broker.path)
    except ValueError:
        return None


def _in_canvas(request: Any) -> bool:
    """A chord member's result is read by the chord's bookkeeping right after the store."""
    return bool(getattr(request, "chord", None) or getattr(request, "group", None))


class _StoreInOneTrip:
    # self is the Celery backend this mixes into (its attributes are untyped).
    def _store_result(
        self: Any,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        key = self.get_key_for_task(task_id)
        ttl = self._ttl(state)
        store = functools.partial(self.ensure, self._store_unless_success, (key, value, ttl))
        if state in READY_STATES and not _in_canvas(request):
            from appliance.worker.consumers import process as consumer_process

            stash = consumer_process.current().stash_result
            if stash(meta["task_id"], key, value, ttl, store):
                return result  # stored by the task's ack (consumer processes)
        store()
        return result

    def _ttl(self: Any, state: str) -> int:
        # As Celery's own _set_with_state: result_failure_expires for a FAILURE (the
        # backend sets failure_expires to result_expires when it is not configured).
        expires = self.failure_expires if state == FAILURE else self.expires
        return int(expires or 0)

    def _store_unless_success(self: Any, key: bytes | str, value: str | bytes, ttl: int) -> None:
        script = self.__dict__.get("_store_script")
        if script is None:
            script = self._store_script = self.client.register_script(
                scripts.source("store_result")
            )
        script(keys=[key], args=[value, ttl], client=self.client)


class RedisBackend(_SubscribeOnWait, _StoreInOneTrip, celery_redis.RedisBackend):  # type: ignore[misc]
    pass


class SentinelBackend(_SubscribeOnWait, _StoreInOneTrip, celery_redis.SentinelBackend):  # type: ignore[misc]
    pass


def install() -> None:
    """Make redis://, rediss:// and sentinel:// result backends these classes (idempotent)."""
    backends.BACKEND_ALIASES["redis"] = f"{__name__}:RedisBackend"
    backends.BACKEND_ALIASES["rediss"] = f"{__name__}:RedisBackend"
    backends.BACKEND_ALIASES["sentinel"] = f"{__name__}:SentinelBackend"
