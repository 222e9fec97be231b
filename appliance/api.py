"""The Python API for application code: submit work and read its record."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import datetime
from typing import Any

from appliance import exitcodes
from appliance.errors import (
    ApplianceError,
    BrokerUnavailableError,
    TaskFailedError,
    UnknownTaskError,
    WaitTimeoutError,
)
from appliance.records.models import TERMINAL_STATES
from appliance.settings import get_settings, mask_url

# After a waited-for result arrives, wait this long at most for its record to say so too
# (the result backend is written just before the record).
_RECORD_SETTLE_SECONDS = 5.0


class UnknownQueueError(ApplianceError):
    """Raised when a submit names a queue that is not configured."""

    exit_code = exitcodes.USAGE


def _app() -> Any:
    from appliance.celery_app import load_tasks

    return load_tasks()


def _records_url() -> str | None:
    settings = get_settings()
    return settings.effective_database_url if settings.records_enabled else None


def submit(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
    task_id: str | None = None,
) -> str:
    """Publish task *name* and return its id.

    Raises UnknownTaskError, UnknownQueueError or BrokerUnavailableError; on any of them
    nothing is queued and no PENDING record is left behind.
    """
    app = _app()
    if name not in app.tasks:
        raise UnknownTaskError(
            f"unknown task {name!r}; fix: check the name (`appliance tasks names` lists them) "
            "or add its module to APPLIANCE_TASK_MODULES"
        )
    settings = get_settings()
    if queue is not None and queue not in settings.queues:
        raise UnknownQueueError(
            f"unknown queue {queue!r}; fix: use one of {', '.join(settings.queues)} "
            "or add it to APPLIANCE_QUEUES"
        )
    republish = task_id is not None
    task_id = task_id or str(uuid.uuid4())
    options: dict[str, Any] = {"task_id": task_id}
    if queue is not None:
        options["queue"] = queue
    if countdown is not None:
        options["countdown"] = countdown
    if eta is not None:
        options["eta"] = eta
    if priority is not None:
        options["priority"] = priority
    try:
        app.send_task(name, args=list(args), kwargs=dict(kwargs or {}), **options)
    except Exception as exc:
        if not republish:  # a record that existed before stays
            _forget(task_id)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerUnavailableError(
            f"could not publish {name} to {mask_url(settings.broker_url)} ({reason}); "
            "fix: check APPLIANCE_BROKER_URL and that redis-server is running and writable"
        ) from None
    return task_id


def _forget(task_id: str) -> None:
    url = _records_url()
    if url is None:
        return
    from appliance.records import store

    # If the database is down too, no record was written either.
    with contextlib.suppress(Exception):
        store.delete_record(url, task_id)


def get_task(task_id: str) -> dict[str, Any] | None:
    """The record of *task_id* (keys as `appliance tasks show --json`), or None."""
    from appliance.records import store

    return store.get_record(get_settings().effective_database_url, task_id)


def wait(task_id: str, timeout: float) -> Any:
    """Wait up to *timeout* seconds for the task to finish and return its result.

    Raises TaskFailedError when it ends FAILURE/REVOKED, WaitTimeoutError on time-out.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import AsyncResult

    deadline = time.monotonic() + timeout
    result = AsyncResult(task_id, app=_app())
    try:
        value = result.get(timeout=timeout, propagate=False, interval=0.1)
    except CeleryTimeout:
        raise WaitTimeoutError(
            f"task {task_id} did not finish within {timeout:g}s (state {result.state}); "
            "fix: wait longer, or check `appliance tasks show` and that a worker consumes "
            "its queue"
        ) from None
    _settle_record(task_id, min(_RECORD_SETTLE_SECONDS, max(0.5, deadline - time.monotonic())))
    if result.state != "SUCCESS":
        raise TaskFailedError(f"task {task_id} ended {result.state}: {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def _settle_record(task_id: str, seconds: float) -> None:
    url = _records_url()
    if url is None:
        return
    from appliance.records import store

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            record = store.get_record(url, task_id)
        except Exception:
            return
        if record and record["status"] in TERMINAL_STATES:
            return
        time.sleep(0.05)
