"""A task's SUCCESS result stored by the worker's main process, in its ack's round trip.

Stock Celery stores the result from the pool child (one Redis round trip there: 40 % of
a child's time on a no-op task), then the main process acks the message (another round
trip). Here the child encodes the result exactly as the backend would and hands it to
the main process with the task's outcome; the ack's Lua script (broker_transport) then
stores it, unless a SUCCESS is there already, announces it and acks, atomically: the
result is never acked without being stored, as before.

Only when it is safe and plain: the result backend lives on the broker's Redis server
(same URL but the database number), no key prefix, a SUCCESS of the task the child is
running, not part of a chord. Everything else is stored by the child as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from billiard.pool import READY


@dataclass(frozen=True)
class Target:
    """Where results go: the backend's database on the broker's server."""

    backend_db: int
    broker_db: int
    expires: int  # seconds, 0 = never


@dataclass(frozen=True)
class DeferredResult:
    """What a child returns in place of the result's repr when the ack stores it."""

    rstr: Any  # what Celery would have returned (the result's repr)
    key: str
    value: str


_target: Target | None = None
_main_pid: int | None = None
_stash: tuple[str, str] | None = None  # in a child: (key, value) of the task running


def _split(url: str) -> tuple[tuple[Any, ...], int] | None:
    """(everything but the database, the database) of a redis:// URL; None otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        return None
    return (parts.scheme, parts.netloc, parts.query), int(path or 0)


def enable(app: Any) -> Target | None:
    """Decide, in a worker's main process before the pool forks, whether the ack stores
    the results. Children inherit the decision."""
    global _target, _main_pid
    _target, _main_pid = None, os.getpid()
    conf = app.conf
    broker = _split(str(conf.broker_url or ""))
    backend = _split(str(conf.result_backend or ""))
    options = {**(conf.broker_transport_options or {})}
    if broker is None or backend is None or broker[0] != backend[0]:
        return None
    if options.get("global_keyprefix") or conf.result_backend_transport_options.get(
        "global_keyprefix"
    ):
        return None
    expires = conf.result_expires
    seconds = int(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)
    _target = Target(backend_db=backend[1], broker_db=broker[1], expires=seconds)
    return _target


def target() -> Target | None:
    return _target


def defer(task_id: str, state: str, request: Any, key: str, value: str) -> bool:
    """In a pool child: keep this SUCCESS for the ack to store; False to store it now."""
    global _stash
    if (
        _target is None
        or state != "SUCCESS"
        or os.getpid() == _main_pid
        or request is None
        or getattr(request, "id", None) != task_id
        or getattr(request, "chord", None)
        or _stash is not None
    ):
        return False
    _stash = (key, value)
    return True


def attach(message: Any, store_now: Any) -> Any:
    """In a pool child, on the way to the main process: put the kept result into the
    task's READY message (or, for any other outcome, store it now with *store_now*)."""
    global _stash
    stash, _stash = _stash, None
    if stash is None:
        return message
    try:
        kind, (job, i, (ok, outcome), inqueue) = message
        if kind == READY and ok and isinstance(outcome, tuple) and outcome[0] == 0:
            _, rstr, runtime = outcome
            deferred = DeferredResult(rstr, *stash)
            return (kind, (job, i, (ok, (0, deferred, runtime)), inqueue))
    except (TypeError, ValueError):
        pass
    store_now(*stash)
    return message


def hand_to_ack(request: Any) -> None:
    """In the main process, as *request* is acked: its kept result goes with the ack."""
    result = request.__dict__.pop("result_for_ack", None)
    if result is not None:
        message = request.message
        message.channel.results_for_ack[message.delivery_tag] = result


def wrap_callback(callback: Any, store_now: Any) -> Any:
    """In the main process: the pool's success callback of a request, taking the kept
    result off the outcome and giving it to the request's ack."""

    def on_success(outcome: Any, **kwargs: Any) -> Any:
        deferred = outcome[1] if isinstance(outcome, tuple) and len(outcome) == 3 else None
        if not isinstance(deferred, DeferredResult):
            return callback(outcome, **kwargs)
        request = getattr(callback, "__self__", None)
        if request is None:
            store_now(deferred.key, deferred.value)
            return callback((outcome[0], deferred.rstr, outcome[2]), **kwargs)
        request.result_for_ack = (deferred.key, deferred.value)
        try:
            return callback((outcome[0], deferred.rstr, outcome[2]), **kwargs)
        finally:
            left = request.__dict__.pop("result_for_ack", None)
            if left is not None:  # not acked late: no ack carries it
                store_now(*left)

    return on_success
