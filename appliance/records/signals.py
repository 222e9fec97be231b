"""Celery signal handlers that keep the task records.

Each handler isolates its failures: a record that cannot be written is logged and
counted, and the task carries on (a bookkeeping hook never kills the work). A final state
(SUCCESS, FAILURE) is retried for a few seconds first when the error is transient.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import signals

from appliance.config.settings import get_settings
from appliance.core.constants import (
    DB_LOCK_TIMEOUT_SECONDS,
    ENQUEUED_AT_HEADER,
    RECORD_STARTED_DELAY_SECONDS,
)
from appliance.core.text import one_line
from appliance.records import store
from appliance.records.db import transient
from appliance.records.deferred import DeferredStarted
from appliance.worker.consumers import process as consumer_process

logger = logging.getLogger("appliance.records")

# Record writes that failed in this process.
write_errors = 0
last_write_error: str | None = None
# The same count for a whole worker node: shared memory made by its main process before
# the pool forks, so the failed writes of every pool child (where the prerun, postrun and
# failure hooks run) reach the heartbeat the main process writes. See write_error_count().
_node_errors: Any = None
_main_pid: int | None = None

# A final-state write (SUCCESS or FAILURE) that fails on a transient database error (a
# locked SQLite file, a PostgreSQL restarting) is tried again after these pauses, inside
# the hook, so before the ack. Bounded: no retry starts unless it can end (pause plus the
# lock wait DB_LOCK_TIMEOUT_SECONDS) within FINAL_WRITE_BUDGET_SECONDS of the first try.
FINAL_WRITE_PAUSES_SECONDS = (0.25, 0.5, 1.0)
FINAL_WRITE_BUDGET_SECONDS = 5.0
# Set when a final write has failed after its retries: this process then tries each write
# once (no task pays the retries again for the rest of an outage) until one succeeds.
_database_down = False

# True while a caller publishes messages whose PENDING records it wrote itself, in bulk
# (`appliance.submit_many`): the publish hook then writes none.
recorded_by_caller: ContextVar[bool] = ContextVar("recorded_by_caller", default=False)


# The record write each writer makes, in words for the log line (not a function's name).
_WRITES = {
    "_on_publish": "at submit",
    "submit_many": "at submit (submit_many)",
    "record_started": "when it started",
    "_on_postrun": "when it succeeded",
    "record_succeeded": "when it succeeded",
    "_on_failure": "when it failed",
    "record_failed": "when it failed",
    "_on_retry": "when it was retried",
    "record_retry": "when it was retried",
    "_on_revoked": "when it was revoked",
    "record_revoked": "when it was revoked",
}


def note_write_error(what: str, exc: Exception) -> None:
    """Count and log a record write that failed (the work itself carries on)."""
    global write_errors, last_write_error
    write_errors += 1
    shared = _node_errors
    if shared is not None:
        with shared.get_lock():
            shared.value += 1
    last_write_error = one_line(exc)
    when = _WRITES.get(what, f"({what})")
    logger.warning(
        "task record not written %s: %s; the task itself goes on; fix: check "
        "APPLIANCE_DATABASE_URL and that the database accepts writes",
        when,
        last_write_error,
    )


def write_error_count() -> int:
    """Failed record writes of this worker node (main process and pool children), else of
    this process alone (outside a worker)."""
    shared = _node_errors
    return int(shared.value) if shared is not None else write_errors


def _share_error_count(**_: Any) -> None:
    """worker_init, in the worker's main process before the pool forks."""
    global _node_errors, _main_pid
    if _node_errors is None:
        import multiprocessing

        _node_errors = multiprocessing.Value("q", write_errors)
    _main_pid = os.getpid()


def _write(url: str, handler: Callable[..., None], retry: bool, args: Any, kwargs: Any) -> None:
    global _database_down
    # Never in a worker's main process: a pause there would stall its event loop; a
    # consumer process (consumers topology) runs its tasks inline and may pause.
    pauses = (
        FINAL_WRITE_PAUSES_SECONDS
        if retry and (os.getpid() != _main_pid or consumer_process.current().is_consumer)
        else ()
    )
    if _database_down:
        pauses = ()
    started = time.monotonic()
    for attempt in range(len(pauses) + 1):
        try:
            handler(url, *args, **kwargs)
        except Exception as exc:
            pause = pauses[attempt] if attempt < len(pauses) else None
            budget_left = FINAL_WRITE_BUDGET_SECONDS - (time.monotonic() - started)
            if pause is None or not transient(exc) or pause + DB_LOCK_TIMEOUT_SECONDS > budget_left:
                if pauses and transient(exc):
                    _database_down = True
                note_write_error(handler.__name__, exc)
                return
            time.sleep(pause)
        else:
            if attempt:
                when = _WRITES.get(handler.__name__, handler.__name__)
                logger.info("task record written after %d retries (%s)", attempt, when)
            _database_down = False
            return


def guarded(handler: Callable[..., None], *, retry: bool = False) -> Callable[..., None]:
    """Run a record writer, isolating its failures; with *retry* (final states), transient
    database errors are retried for a few seconds at most (see FINAL_WRITE_*)."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        url = get_settings().records_url
        if url is None:
            return
        _write(url, handler, retry, args, kwargs)

    return wrapper


def _final(handler: Callable[..., None]) -> Callable[..., None]:
    return guarded(handler, retry=True)


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


def _write_started(url: str, fields: dict[str, Any]) -> None:
    """A STARTED write (fields: the keyword arguments of store.record_started)."""
    _write(url, store.record_started, False, (), fields)


started_writes = DeferredStarted(RECORD_STARTED_DELAY_SECONDS, _write_started)


def flush_started(task_id: str) -> None:
    """Write *task_id*'s deferred STARTED now (before a progress write, which must not be
    followed by a STARTED)."""
    fields = started_writes.take(task_id)
    url = get_settings().records_url
    if fields and url is not None:
        _write_started(url, fields)


def _published_at(request: Any) -> datetime | None:
    """When an appliance publisher sent the task (its enqueued_at header), if it did."""
    try:
        return datetime.fromtimestamp(float(getattr(request, ENQUEUED_AT_HEADER)), UTC)
    except (AttributeError, TypeError, ValueError, OverflowError, OSError):
        return None


def _on_prerun(task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    url = get_settings().records_url
    if url is None:
        return
    request = task.request
    started_writes.add(
        task_id,
        url,
        {
            "task_id": task_id,
            "name": task.name,
            "args": list(args) if args is not None else None,
            "kwargs": kwargs,
            "queue": (request.delivery_info or {}).get("routing_key"),
            "worker": request.hostname,
            "retries": request.retries or 0,
            "parent_id": request.parent_id,
            "root_id": request.root_id,
            "started_at": datetime.now(UTC),
            # Only for a task with no PENDING record (a plain Celery client's).
            "created_at": _published_at(request),
        },
    )


def _final_write(url: str, writer: Callable[..., None], retry: bool, **kwargs: Any) -> None:
    """A task's final record write: carried by its ack in a consumer process (the
    journal, appliance/records/journal.py), else written now."""
    from appliance.records import journal

    consumer = consumer_process.current()
    if consumer.records_journal is not None:
        if writer is not store.record_retry:
            kwargs.setdefault("finished_at", datetime.now(UTC))
        entry = journal.encode(writer.__name__, kwargs)
        later = functools.partial(_write, url, writer, retry, (), kwargs)
        if consumer.stash_record(kwargs["task_id"], entry, later):
            return
    writer(url, **kwargs)


@_final
def _on_postrun(
    url: str, task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    if state == "SUCCESS":
        _final_write(
            url,
            store.record_succeeded,
            True,
            task_id=task_id,
            name=task.name,
            result=retval,
            started=started_writes.take(task_id),
        )


@_final
def _on_failure(
    url: str,
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    error = f"{type(exception).__name__}: {exception}" if exception else "unknown error"
    _final_write(
        url,
        store.record_failed,
        True,
        task_id=task_id or "",
        name=getattr(sender, "name", "") or "",
        error=error,
        traceback=str(einfo) if einfo else None,
        started=started_writes.take(task_id or ""),
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
    _final_write(
        url,
        store.record_retry,
        False,
        task_id=request.id,
        name=getattr(sender, "name", "") or "",
        error=error,
        retries=(request.retries or 0) + 1,
        started=started_writes.take(request.id),
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
    signals.worker_init.connect(_share_error_count, weak=False, dispatch_uid="appl-errors")
