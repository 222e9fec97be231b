"""The Python API for application code: submit work and read its record."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from appliance.client.checks import (
    app_with_tasks,
    check_delay,
    check_limits,
    check_payload,
    checked_target,
    unknown_task,
)
from appliance.client.publish import NoAnswerError, publish, publish_fix
from appliance.config.settings import get_settings
from appliance.core import constants as C
from appliance.core.text import first_line, mask_url
from appliance.errors import (
    BrokerUnavailableError,
    TaskFailedError,
    WaitTimeoutError,
)
from appliance.errors import (  # submit's own error, importable with the API
    UnknownQueueError as UnknownQueueError,
)
from appliance.records.models import TERMINAL_STATES

# After a waited-for result arrives, wait this long at most for its record to say so too
# (the result backend is written just before the record).
_RECORD_SETTLE_SECONDS = 5.0


def submit(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    countdown: float | None = None,
    eta: datetime | None = None,
    priority: int | None = None,
    task_id: str | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> str:
    """Publish task *name* and return its id.

    *priority* 0-9 is Redis's: 0 first (see docs/tasks.md, Priorities on Redis).
    *soft_time_limit* / *time_limit* (seconds) override the task's limits for this call.

    Raises UnknownTaskError, UnknownQueueError, SubmitOptionError (an ETA or time limit
    beyond the visibility timeout, a soft limit above the hard one, arguments that are not
    JSON or over APPLIANCE_MAX_PAYLOAD_BYTES) or
    BrokerUnavailableError; on any of them nothing is queued and no PENDING record is
    left behind.
    """
    app, settings = checked_target(name, queue)
    task = app.tasks[name]
    hard = time_limit or task.time_limit or settings.task_time_limit
    if soft_time_limit is not None or time_limit is not None:
        # Celery copies the configured limits onto every task that sets none of its own.
        soft = soft_time_limit or task.soft_time_limit or settings.task_soft_time_limit
        soft_origin = ""
        if soft_time_limit is None:
            own = soft != settings.task_soft_time_limit
            soft_origin = "the task's own" if own else "APPLIANCE_TASK_SOFT_TIME_LIMIT"
        check_limits(settings, soft, hard, soft_origin)
    if countdown is not None or eta is not None:
        check_delay(settings, countdown, eta, hard)
    check_payload(settings, name, args, kwargs)
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
    if soft_time_limit is not None:
        options["soft_time_limit"] = soft_time_limit
    if time_limit is not None:
        options["time_limit"] = time_limit
    try:
        publish(app, name, list(args), dict(kwargs or {}), options)
    except NoAnswerError:
        if not republish:
            _forget(task_id)
        raise BrokerUnavailableError(
            f"Redis at {mask_url(settings.broker_url)} did not answer within "
            f"{C.PUBLISH_SOCKET_TIMEOUT:g}s, so task {task_id} ({name}) is not accepted, but "
            "Redis may still queue it if it was only paused or overloaded; fix: check that "
            f"redis-server is running and responsive, and `appliance tasks show {task_id}` "
            "before submitting it again"
        ) from None
    except Exception as exc:
        if not republish:  # a record that existed before stays
            _forget(task_id)
        reason = first_line(exc)
        raise BrokerUnavailableError(
            f"could not publish {name} to {mask_url(settings.broker_url)} ({reason}); "
            f"fix: {publish_fix(reason, settings.broker_url, exc)}"
        ) from None
    return task_id


def submit_workflow(workflow: Any) -> str:
    """Publish a canvas (a chain, group or chord of signatures) whose members all share
    one root id, and return that id.

    The root id is the id of the task whose result is the workflow's result (a chain's
    last task, a chord's callback), so :func:`wait` works on it; for a group it is the
    group's id. `appliance tasks list --root ID` lists every member. Raises
    UnknownTaskError (nothing queued) or BrokerUnavailableError (no PENDING record left;
    members published before a broker failure halfway through stay queued).
    """
    from celery.canvas import maybe_signature

    app = app_with_tasks()
    workflow = maybe_signature(workflow, app=app)
    for name in set(_task_names(workflow)):
        if name not in app.tasks:
            raise unknown_task(name)
    # Celery gives each member of a group or chord sent by a client its own root id;
    # freezing first tells us the result's id, which all members then share.
    root_id = str(workflow.freeze().id)
    try:
        workflow.apply_async(root_id=root_id)
    except Exception as exc:
        _forget_workflow(root_id)
        settings = get_settings()
        reason = first_line(exc)
        raise BrokerUnavailableError(
            f"could not publish the workflow {root_id} to {mask_url(settings.broker_url)} "
            f"({reason}); fix: {publish_fix(reason, settings.broker_url, exc)}"
        ) from None
    return root_id


def _task_names(sig: Any) -> Iterator[str]:
    """Every task name in a canvas: members, chord callbacks and linked callbacks."""
    from celery.canvas import maybe_signature
    from celery.utils.functional import maybe_list

    members = list(getattr(sig, "tasks", None) or [])
    body = getattr(sig, "body", None)
    if body is not None:
        members.append(body)
    if not members:
        yield sig["task"]
    for option in ("link", "link_error"):
        members += maybe_list(sig.options.get(option)) or []
    for member in members:
        yield from _task_names(maybe_signature(member))


def _forget_workflow(root_id: str) -> None:
    url = get_settings().records_url
    if url is None:
        return
    from appliance.records import maintenance, store

    with contextlib.suppress(Exception):
        for record in store.list_records(url, root_id=root_id, status="PENDING", limit=10_000):
            maintenance.delete_record(url, record["id"])


def _forget(task_id: str) -> None:
    from appliance.records import maintenance

    url = get_settings().records_url
    if url is None:
        return

    # If the database is down too, no record was written either.
    with contextlib.suppress(Exception):
        maintenance.delete_record(url, task_id)


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
    result = AsyncResult(task_id, app=app_with_tasks())
    try:
        value = result.get(timeout=timeout, propagate=False, interval=0.1)
    except CeleryTimeout:
        raise WaitTimeoutError(_not_finished(task_id, timeout, result.state)) from None
    finally:
        _release(result)
    _settle_record(task_id, min(_RECORD_SETTLE_SECONDS, max(0.5, deadline - time.monotonic())))
    if result.state != "SUCCESS":
        raise TaskFailedError(f"task {task_id} ended {result.state}: {_describe(value)}")
    return value


def _release(result: Any) -> None:
    """Stop waiting on *result* now. Celery keeps a result whose get() timed out or was
    interrupted until its task is ready, and its __del__ at interpreter exit then printed
    `Exception ignored in: <function AsyncResult.__del__>` (sys.meta_path is None)."""
    backend = result.backend
    if backend is None:
        return
    with contextlib.suppress(Exception):
        backend.remove_pending_result(result)
    result.backend = None  # nothing left for __del__ to do


def _not_finished(task_id: str, timeout: float, result_state: str) -> str:
    """The time-out line, with the state the task's record has (the result backend says
    PENDING until the task ends): still queued, or running on a worker."""
    try:
        record = get_task(task_id)
    except Exception:
        record = None
    state = record["status"] if record else result_state
    head = f"task {task_id} did not finish within {timeout:g}s"
    show = f"`appliance tasks show {task_id}`"
    if state in ("STARTED", "PROGRESS"):
        worker = f" on {record['worker']}" if record and record.get("worker") else ""
        return (
            f"{head} (state {state}: it is running{worker} and goes on); fix: wait longer "
            f"(--wait), or follow it with {show}"
        )
    if state == "RETRY":
        return (
            f"{head} (state RETRY: it failed and waits for its next attempt); fix: wait longer, "
            f"or see why with {show}"
        )
    return (
        f"{head} (state {state}: still queued, no worker has started it); fix: wait longer, "
        "or check that a worker consumes its queue (`appliance status`)"
    )


def _describe(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)


def _settle_record(task_id: str, seconds: float) -> None:
    url = get_settings().records_url
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
