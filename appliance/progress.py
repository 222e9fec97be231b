"""Progress reporting from inside a task: the record and the result backend both learn it."""

from __future__ import annotations

import logging
from typing import Any

from appliance.records import signals as record_signals
from appliance.records import store

logger = logging.getLogger("appliance.progress")


def report(task: Any, current: int, total: int, message: str | None = None) -> int:
    """Report that *task* (a bound task) has done *current* of *total* steps.

    Returns the percentage stored. Neither a database nor a backend error stops the task.
    """
    percent = max(0, min(100, int(current * 100 / total))) if total else 100
    meta = {"current": current, "total": total, "percent": percent, "message": message}
    try:
        task.update_state(state="PROGRESS", meta=meta)
    except Exception as exc:
        logger.warning("progress not stored in the result backend: %s", exc)
    record_signals.flush_started(task.request.id)
    guarded = record_signals.guarded(
        lambda url: store.record_progress(
            url, task_id=task.request.id, percent=percent, message=message
        )
    )
    guarded()
    return percent
