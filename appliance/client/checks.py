"""Checks before a submit publishes anything: a known task and queue, arguments JSON can
carry within the size cap, time limits and delays the worker and Redis can keep."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from appliance.config.settings import Settings, get_settings
from appliance.core.text import first_line
from appliance.errors import SubmitOptionError, UnknownQueueError, UnknownTaskError


def app_with_tasks() -> Any:
    from appliance.celery_app import load_tasks

    return load_tasks()


def checked_target(name: str, queue: str | None) -> tuple[Any, Settings]:
    """The app and settings, once *name* is a known task and *queue* a configured queue."""
    app = app_with_tasks()
    if name not in app.tasks:
        raise unknown_task(name)
    settings = get_settings()
    if queue is not None and queue not in settings.queues:
        raise UnknownQueueError(
            f"unknown queue {queue!r}; fix: use one of {', '.join(settings.queues)} "
            "or add it to APPLIANCE_QUEUES"
        )
    return app, settings


def unknown_task(name: str) -> UnknownTaskError:
    return UnknownTaskError(
        f"unknown task {name!r}; fix: check the name (`appliance tasks names` lists them) "
        "or add its module to APPLIANCE_TASK_MODULES"
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


def check_limits(settings: Settings, soft: float, hard: float, soft_origin: str) -> None:
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


def check_delay(
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
