"""Celery signal handlers that keep the task records.

Each handler isolates its failures: a record that cannot be written is logged and
counted, and the task carries on (a bookkeeping hook never kills the work).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from celery import signals

from appliance.constants import ENQUEUED_AT_HEADER
from appliance.records import store
from appliance.settings import get_settings

logger = logging.getLogger("appliance.records")

# Record writes that failed in this process (the heartbeat of the runtime reports it).
write_errors = 0
last_write_error: str | None = None

# True while a caller publishes messages whose PENDING records it wrote itself, in bulk
# (`appliance.submit_many`): the publish hook then writes none.
recorded_by_caller: ContextVar[bool] = ContextVar("recorded_by_caller", default=False)


def note_write_error(what: str, exc: Exception) -> None:
    """Count and log a record write that failed (the work itself carries on)."""
    global write_errors, last_write_error
    write_errors += 1
    last_write_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    logger.warning("task record not written (%s): %s", what, last_write_error)


def guarded(handler: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        url = get_settings().records_url
        if url is None:
            return
        try:
            handler(url, *args, **kwargs)
        except Exception as exc:
            note_write_error(handler.__name__, exc)

    return wrapper


def _stamp_enqueued_at(headers: dict[str, Any] | None, **_: Any) -> None:
    if headers is not None:
        headers[ENQUEUED_AT_HEADER] = time.time()


@guarded
def _on_publish(
    url: str,
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    if recorded_by_caller.get():
        return
    headers = headers or {}
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, (list, tuple)) and len(body) >= 2 else (None, None)
    )
    store.record_published(
        url,
        task_id=headers.get("id") or "",
        name=headers.get("task") or sender or "",
        args=args,
        kwargs=kwargs,
        queue=routing_key,
        parent_id=headers.get("parent_id"),
        root_id=headers.get("root_id"),
    )


@guarded
def _on_prerun(
    url: str, task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    request = task.request
    store.record_started(
        url,
        task_id=task_id,
        name=task.name,
        args=list(args) if args is not None else None,
        kwargs=kwargs,
        queue=(request.delivery_info or {}).get("routing_key"),
        worker=request.hostname,
        retries=request.retries or 0,
        parent_id=request.parent_id,
        root_id=request.root_id,
    )


@guarded
def _on_postrun(
    url: str, task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    if state == "SUCCESS":
        store.record_succeeded(url, task_id=task_id, name=task.name, result=retval)


@guarded
def _on_failure(
    url: str,
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    error = f"{type(exception).__name__}: {exception}" if exception else "unknown error"
    store.record_failed(
        url,
        task_id=task_id or "",
        name=getattr(sender, "name", "") or "",
        error=error,
        traceback=str(einfo) if einfo else None,
    )


@guarded
def _on_retry(
    url: str, sender: Any = None, request: Any = None, reason: Any = None, **_: Any
) -> None:
    if request is None:
        return
    error = (
        f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    )
    store.record_retry(
        url,
        task_id=request.id,
        name=getattr(sender, "name", "") or "",
        error=error,
        retries=(request.retries or 0) + 1,
    )


@guarded
def _on_revoked(
    url: str,
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    signum: Any = None,
    **_: Any,
) -> None:
    if request is None:
        return
    reason = "expired" if expired else (f"terminated ({signum})" if terminated else "revoked")
    store.record_revoked(
        url, task_id=request.id, name=getattr(sender, "name", "") or "", reason=reason
    )


def connect() -> None:
    """Attach the record keepers to Celery's signals (idempotent)."""
    signals.before_task_publish.connect(_stamp_enqueued_at, weak=False, dispatch_uid="appl-stamp")
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="appl-publish")
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="appl-prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="appl-postrun")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="appl-failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="appl-retry")
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="appl-revoked")
