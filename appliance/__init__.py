"""Celery Appliance: a production-grade Celery worker + beat for systemd and supervisord hosts.

Application code submits work with :func:`submit` (or many tasks at once with
:func:`submit_many`) and reads its record with :func:`get_task`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["get_task", "submit", "submit_many"]
__version__ = "0.1.0"


def submit(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    countdown: float | None = None,
    **options: Any,
) -> str:
    """Publish task *name* and return its id (see :func:`appliance.api.submit` for the
    other *options*: eta, priority, soft_time_limit, time_limit)."""
    from appliance.api import submit as _submit

    return _submit(name, args=args, kwargs=kwargs, queue=queue, countdown=countdown, **options)


def submit_many(
    name: str,
    calls: Iterable[Mapping[str, Any]],
    queue: str | None = None,
    priority: int | None = None,
) -> list[str]:
    """Publish one task *name* per {"args": [...], "kwargs": {...}} in *calls*, in bulk;
    return the ids in order (see :func:`appliance.bulk.submit_many`)."""
    from appliance.bulk import submit_many as _submit_many

    return _submit_many(name, calls, queue=queue, priority=priority)


def get_task(task_id: str) -> dict[str, Any] | None:
    """The record of *task_id* as a dict, or None (see :func:`appliance.api.get_task`)."""
    from appliance.api import get_task as _get_task

    return _get_task(task_id)
