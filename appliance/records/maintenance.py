"""Operator bulk actions on task records: cleanup, retry, revoke, the reconciler's scan."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from appliance.records.db import get_engine, session_scope
from appliance.records.models import TERMINAL_STATES, TaskRecord
from appliance.records.statements import now
from appliance.records.store import to_dict


def delete_records(url: str, task_ids: Sequence[str], chunk: int = 500) -> None:
    """Remove records (the part of a batch that was never published)."""
    with get_engine(url).begin() as conn:
        for start in range(0, len(task_ids), chunk):
            conn.execute(
                delete(TaskRecord).where(TaskRecord.id.in_(list(task_ids[start : start + chunk])))
            )


def revoke_many(url: str, task_ids: Sequence[str], reason: str, chunk: int = 500) -> int:
    """Mark existing records REVOKED in bulk (e.g. after a queue purge), sparing any in a
    final state already; return how many changed."""
    changed = 0
    stamp = now()
    with session_scope(url) as session:
        for start in range(0, len(task_ids), chunk):
            result = session.execute(
                update(TaskRecord)
                .where(TaskRecord.id.in_(list(task_ids[start : start + chunk])))
                .where(TaskRecord.status.notin_(TERMINAL_STATES))
                .values(status="REVOKED", error=reason, finished_at=stamp, updated_at=stamp)
            )
            changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def delete_record(url: str, task_id: str) -> None:
    """Remove a record (a publish that failed leaves no PENDING record behind)."""
    with session_scope(url) as session:
        session.execute(delete(TaskRecord).where(TaskRecord.id == task_id))


def delete_finished_before(
    url: str, cutoff: datetime, statuses: Sequence[str] = TERMINAL_STATES
) -> int:
    """Delete records in a final state created before *cutoff*; return how many."""
    with session_scope(url) as session:
        result = session.execute(
            delete(TaskRecord).where(
                TaskRecord.created_at < cutoff, TaskRecord.status.in_(list(statuses))
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


def reset_for_retry(url: str, task_id: str) -> None:
    """Put a finished record back to PENDING before it is republished under its id."""
    with session_scope(url) as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id == task_id)
            .values(
                status="PENDING",
                progress=0,
                progress_message=None,
                result=None,
                started_at=None,
                finished_at=None,
                updated_at=now(),
            )
        )


def count_records(url: str, *, before: datetime, statuses: Sequence[str]) -> int:
    with session_scope(url) as session:
        query = (
            select(func.count())
            .select_from(TaskRecord)
            .where(TaskRecord.created_at < before, TaskRecord.status.in_(list(statuses)))
        )
        return int(session.scalar(query) or 0)


def delete_batch(url: str, *, before: datetime, statuses: Sequence[str], limit: int) -> int:
    """Delete up to *limit* matching records (oldest first); return how many went."""
    with session_scope(url) as session:
        ids = list(
            session.scalars(
                select(TaskRecord.id)
                .where(TaskRecord.created_at < before, TaskRecord.status.in_(list(statuses)))
                .order_by(TaskRecord.created_at)
                .limit(limit)
            )
        )
        if ids:
            session.execute(delete(TaskRecord).where(TaskRecord.id.in_(ids)))
        return len(ids)


def list_pending_before(url: str, cutoff: datetime, *, limit: int = 10_000) -> list[dict[str, Any]]:
    """PENDING records created before *cutoff*, oldest first (the reconciler's candidates)."""
    query = (
        select(TaskRecord)
        .where(TaskRecord.status == "PENDING", TaskRecord.created_at < cutoff)
        .order_by(TaskRecord.created_at)
        .limit(limit)
    )
    with session_scope(url) as session:
        return [to_dict(r) for r in session.scalars(query)]
