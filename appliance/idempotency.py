"""Idempotent tasks: the body runs once per key; duplicates get the first result.

With acks late a message can be delivered more than once (a worker lost mid-task, a
visibility timeout passed, a producer that published twice). For a task whose body must
not run twice (a charge, an e-mail), decorate the function below ``@app.task``::

    @app.task(name="shop.charge")
    @idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: float) -> dict[str, Any]: ...

Before the body runs, ``SET appliance:idem:<task name>:<key> running NX EX <hard limit +
margin>`` on the broker's Redis claims the key. The body's result then replaces the
claim for ``ttl`` seconds. A duplicate finds either the result (returns it, body not
run) or a claim (retries in a few seconds: the first delivery may still fail). A body
that raises releases its claim, so a retry runs it again; a child killed mid-body
leaves a claim that expires just after the hard time limit. Without ``key`` the task
id is the key, which covers redeliveries of one message but not a second submit.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import redis
from kombu.utils import json as kombu_json

from appliance.broker import scripts
from appliance.core import constants as C
from appliance.core import keys

logger = logging.getLogger("appliance.idempotency")

P = ParamSpec("P")
R = TypeVar("R")

# kombu's JSON, as Celery's results use: datetimes, UUIDs and Decimals round-trip.
dumps = cast(Callable[[Any], str], kombu_json.dumps)
loads = cast(Callable[[Any], Any], kombu_json.loads)


class DuplicateRunningError(RuntimeError):
    """Raised (and retried) when another delivery with the same key is still running."""


_clients: dict[int, redis.Redis] = {}


def _client() -> redis.Redis:
    # One client per process: a prefork child must not reuse its parent's sockets.
    pid = os.getpid()
    if pid not in _clients:
        from appliance.broker.admin import client
        from appliance.config.settings import get_settings

        _clients.clear()
        _clients[pid] = client(get_settings())
    return _clients[pid]


def idem_key(task_name: str, key: str) -> str:
    """The Redis key guarding *key* of task *task_name*."""
    return f"{keys.IDEMPOTENCY_KEY_PREFIX}{task_name}:{key}"


def _claim_seconds(task: Any) -> int:
    hard = (getattr(task.request, "timelimit", None) or (None, None))[0]
    hard = hard or task.time_limit or task.app.conf.task_time_limit or C.DEFAULT_TIME_LIMIT
    return int(hard) + C.STOP_TIMEOUT_MARGIN_SECONDS


def idempotent(
    key: Callable[..., Any] | None = None, ttl: int = C.IDEMPOTENCY_TTL_SECONDS
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a task body run once per key (``key(*args, **kwargs)``, default: the task id).

    Put it between ``@app.task`` and the function. Results must be JSON (they are
    anyway: the appliance accepts only JSON).
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            from celery import current_task

            task = current_task
            if not task or task.request.id is None:  # called directly, not as a task
                return func(*args, **kwargs)
            name = idem_key(task.name, str(key(*args, **kwargs) if key else task.request.id))
            client = _client()
            token = uuid.uuid4().hex
            claim = dumps({"state": "running", "task_id": task.request.id, "token": token})
            if not client.set(name, claim, nx=True, ex=_claim_seconds(task)):
                return cast(R, _duplicate(task, name, client))
            try:
                result = func(*args, **kwargs)
            except BaseException:
                client.eval(scripts.source("delete_if_holds"), 1, name, claim)
                raise
            done = {"state": "done", "task_id": task.request.id, "result": result}
            client.set(name, dumps(done), ex=ttl)
            return result

        return wrapper

    return decorate


def _duplicate(task: Any, name: str, client: redis.Redis) -> Any:
    raw = client.get(name)
    entry: dict[str, Any] = loads(raw) if raw else {}
    if entry.get("state") == "done":
        logger.info(
            "%s[%s]: duplicate of %s (%s); returning its result without running the body",
            task.name,
            task.request.id,
            entry.get("task_id"),
            name,
        )
        return entry.get("result")
    raise task.retry(
        exc=DuplicateRunningError(
            f"{name} is held by delivery {entry.get('task_id')}, still running; retrying"
        ),
        countdown=C.IDEMPOTENCY_BUSY_RETRY_SECONDS,
        max_retries=None,
    )
