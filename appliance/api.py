"""The Python API for application code: submit work and read its record."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from appliance.config.settings import Settings, get_settings
from appliance.core import constants as C
from appliance.core import exitcodes
from appliance.core.text import first_line, mask_url
from appliance.errors import (
    ApplianceError,
    BrokerUnavailableError,
    SubmitOptionError,
    TaskFailedError,
    UnknownTaskError,
    WaitTimeoutError,
)
from appliance.records.models import TERMINAL_STATES

# After a waited-for result arrives, wait this long at most for its record to say so too
# (the result backend is written just before the record).
_RECORD_SETTLE_SECONDS = 5.0


class UnknownQueueError(ApplianceError):
    """Raised when a submit names a queue that is not configured."""

    exit_code = exitcodes.USAGE


def _app() -> Any:
    from appliance.celery_app import load_tasks

    return load_tasks()


def checked_target(name: str, queue: str | None) -> tuple[Any, Settings]:
    """The app and settings, once *name* is a known task and *queue* a configured queue."""
    app = _app()
    if name not in app.tasks:
        raise _unknown_task(name)
    settings = get_settings()
    if queue is not None and queue not in settings.queues:
        raise UnknownQueueError(
            f"unknown queue {queue!r}; fix: use one of {', '.join(settings.queues)} "
            "or add it to APPLIANCE_QUEUES"
        )
    return app, settings


def _unknown_task(name: str) -> UnknownTaskError:
    return UnknownTaskError(
        f"unknown task {name!r}; fix: check the name (`appliance tasks names` lists them) "
        "or add its module to APPLIANCE_TASK_MODULES"
    )


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
        _check_limits(settings, soft, hard, soft_origin)
    if countdown is not None or eta is not None:
        _check_delay(settings, countdown, eta, hard)
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
        _publish(app, name, list(args), dict(kwargs or {}), options)
    except _NoAnswerError:
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
            f"fix: {_publish_fix(reason)}"
        ) from None
    return task_id


class _NoAnswerError(Exception):
    """Redis took the command but did not answer in time: it may still execute it."""


def _give_up_on_timeout(exc: BaseException, interval: float) -> None:
    """kombu's errback between publish attempts: retry a refused or reset connection,
    never a timeout. A timed-out LPUSH may sit unread in the socket of a paused or
    overloaded Redis and run later; each retry would queue one more copy."""
    import redis

    if isinstance(exc, (redis.TimeoutError, TimeoutError)):
        raise _NoAnswerError(str(exc))


# Publishing connections per (process, broker URL): reads give up after
# PUBLISH_SOCKET_TIMEOUT, not the worker's REDIS_SOCKET_TIMEOUT.
_publish_pools: dict[tuple[int, str], Any] = {}


def _publish(
    app: Any, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
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


def check_payload(
    settings: Settings, name: str, args: Any, kwargs: Any, what: str = "the arguments"
) -> int:
    """Refuse arguments that JSON cannot carry or that exceed APPLIANCE_MAX_PAYLOAD_BYTES,
    before any record is written or anything published; return their size in bytes."""
    from kombu.utils.json import dumps  # the worker's serializer: same types, same size

    try:
        size = len(dumps([list(args), dict(kwargs or {})]).encode())  # type: ignore[no-untyped-call]
    except (TypeError, ValueError, RecursionError) as exc:
        raise SubmitOptionError(
            f"{what} of {name} cannot be sent as JSON ({first_line(exc)}); fix: pass only "
            "JSON types (str, int, float, bool, None, list, dict)"
        ) from None
    cap = settings.max_payload_bytes
    if cap and size > cap:
        raise SubmitOptionError(
            f"{what} of {name} are {size} bytes of JSON, over APPLIANCE_MAX_PAYLOAD_BYTES="
            f"{cap}; fix: pass a reference (a file path, URL or database id) instead of the "
            "data, or raise APPLIANCE_MAX_PAYLOAD_BYTES"
        )
    return size


def _check_limits(settings: Settings, soft: float, hard: float, soft_origin: str) -> None:
    """Refuse per-call limits the worker would not keep."""
    if soft > hard:
        # The prefork pool arms the hard timer only once the soft one has fired.
        origin = f" ({soft_origin})" if soft_origin else ""
        raise SubmitOptionError(
            f"soft time limit {soft:g}s{origin} is above the hard time limit {hard:g}s, and "
            "the worker starts the hard timer only when the soft one fires, so nothing would "
            f"stop the task at {hard:g}s; fix: also give --soft-time-limit of at most {hard:g}"
        )
    if hard >= settings.visibility_timeout:
        raise SubmitOptionError(
            f"time limit {hard:g}s is not below APPLIANCE_VISIBILITY_TIMEOUT="
            f"{settings.visibility_timeout}s, so Redis would hand the still-running task to "
            "a second worker; fix: lower the time limit or raise APPLIANCE_VISIBILITY_TIMEOUT"
        )


def _check_delay(
    settings: Settings, countdown: float | None, eta: datetime | None, hard: float
) -> None:
    """Refuse a delay Redis cannot keep: a worker holds a delayed message unacked until it
    has run, and after the visibility timeout Redis delivers it again (celery #5306, #5935)."""
    ahead, what = 0.0, "a delay of 0s"
    if countdown is not None:
        ahead, what = countdown, f"countdown {countdown:g}s"
    if eta is not None:
        eta_utc = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
        seconds = (eta_utc - datetime.now(UTC)).total_seconds()
        if seconds > ahead:
            ahead, what = seconds, f"ETA {eta_utc.isoformat()} ({seconds:.0f}s ahead)"
    allowed = settings.visibility_timeout - hard
    if ahead >= allowed:
        raise SubmitOptionError(
            f"{what} plus the hard time limit {hard:g}s is beyond APPLIANCE_VISIBILITY_TIMEOUT="
            f"{settings.visibility_timeout}s, so Redis would deliver the task again and again "
            f"(celery #5306, #5935); fix: stay under {allowed:g}s ahead (use beat for later "
            "work) or raise APPLIANCE_VISIBILITY_TIMEOUT"
        )


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

    app = _app()
    workflow = maybe_signature(workflow, app=app)
    for name in set(_task_names(workflow)):
        if name not in app.tasks:
            raise _unknown_task(name)
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
            f"({reason}); fix: {_publish_fix(reason)}"
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


def _publish_fix(reason: str) -> str:
    """The fix for a refused publish, from Redis's reason."""
    if "MISCONF" in reason:
        # Redis could not write its AOF/RDB file (disk full or failing) and refuses writes.
        return (
            "Redis cannot write its persistence file to disk (disk full or failing) and "
            "refuses writes until it can: free space on the disk of Redis's `dir` (its log "
            "names the error); it accepts writes again by itself"
        )
    return "check APPLIANCE_BROKER_URL and that redis-server is running and writable"


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
