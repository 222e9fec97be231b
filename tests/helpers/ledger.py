"""The fault tests' ledger: task records looked up by id (outside the Redis under test)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from appliance.records.db import get_engine
from appliance.records.models import TaskRecord


def statuses(url: str, ids: list[str]) -> dict[str, str]:
    """The record status of each id, MISSING where there is no record."""
    found: dict[str, str] = {}
    with get_engine(url).connect() as conn:
        for start in range(0, len(ids), 500):
            query = select(TaskRecord.id, TaskRecord.status).where(
                TaskRecord.id.in_(ids[start : start + 500])
            )
            found.update({task_id: status for task_id, status in conn.execute(query)})
    return {task_id: found.get(task_id, "MISSING") for task_id in ids}


def all_succeeded(url: str, ids: list[str]) -> Callable[[], bool]:
    """A condition for wait_until: every id's record is SUCCESS."""
    return lambda: all(s == "SUCCESS" for s in statuses(url, ids).values())
