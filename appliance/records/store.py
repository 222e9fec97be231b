"""Reads and writes of task records. Writers are called from Celery signal handlers.

Each ``*_write`` function says what a write sets (a :class:`RowWrite`); ``record_*``
makes one write, :func:`write_many` several in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from appliance.records.db import get_engine, session_scope
from appliance.records.models import TaskRecord
from appliance.records.statements import RowWrite, apply, insert_ignore, jsonable, now

# Keys of the dict form of a record: `tasks show --json` and `appliance.get_task()`.
RECORD_KEYS = (
    "id",
    "name",
    "status",
    "progress",
    "progress_message",
    "result",
    "error",
    "traceback",
    "retries",
    "worker",
    "queue",
    "args",
    "kwargs",
    "parent_id",
    "root_id",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
)


def record_published(
    url: str,
    *,
    task_id: str,
    name: str,
    args: Any,
    kwargs: Any,
    queue: str | None,
    parent_id: str | None = None,
    root_id: str | None = None,
) -> None:
    """Write the PENDING record of a task about to be published (kept if it exists)."""
    record_published_many(
        url,
        [
            {
                "task_id": task_id,
                "name": name,
                "args": args,
                "kwargs": kwargs,
                "queue": queue,
                "parent_id": parent_id,
                "root_id": root_id,
            }
        ],
    )


def record_published_many(url: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write the PENDING records of a batch about to be published, in one transaction.

    Each row has the keyword arguments of `record_published`; existing records are kept.
    """
    if not rows:
        return
    stamp = now()
    with get_engine(url).begin() as conn:
        insert_ignore(
            conn,
            [
                {
                    "id": row["task_id"],
                    "name": row["name"],
                    "args": jsonable(row.get("args")),
                    "kwargs": jsonable(row.get("kwargs")),
                    "queue": row.get("queue"),
                    "status": "PENDING",
                    "progress": 0,
                    "retries": 0,
                    "parent_id": row.get("parent_id"),
                    "root_id": row.get("root_id"),
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for row in rows
            ],
        )


def started_write(
    *,
    task_id: str,
    name: str,
    args: Any,
    kwargs: Any,
    queue: str | None,
    worker: str | None,
    retries: int,
    parent_id: str | None = None,
    root_id: str | None = None,
    started_at: datetime | None = None,
    created_at: datetime | None = None,
) -> RowWrite:
    """Mark a task STARTED on *worker* (never over a final state: a deferred STARTED write
    may come after the task ended, see records.deferred.DeferredStarted). *created_at*
    (when the message was published) fills only a new row (see _started_fields)."""
    values, defaults = _started_fields(
        {
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "queue": queue,
            "worker": worker,
            "retries": retries,
            "parent_id": parent_id,
            "root_id": root_id,
            "started_at": started_at or now(),
            "created_at": created_at,
        }
    )
    return RowWrite.of(task_id, {"status": "STARTED", **values}, defaults, unless_final=True)


def _started_fields(started: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns a STARTED write sets, and those it fills only in a new row, from the
    keyword arguments of `record_started` (none when *started* is None).

    A new row is a task with no PENDING record (sent by a producer that writes none, e.g.
    a plain Celery client): its created_at is when it was published (*created_at*, from
    the message), else when it started; never later than started_at (the publisher's
    clock may be ahead of the worker's)."""
    if not started:
        return {}, {}
    started_at = started.get("started_at") or now()
    created_at = started.get("created_at")
    values = {
        "started_at": started_at,
        "worker": started.get("worker"),
        "retries": started.get("retries") or 0,
        "finished_at": None,
    }
    defaults = {
        "args": jsonable(started.get("args")),
        "kwargs": jsonable(started.get("kwargs")),
        "queue": started.get("queue"),
        "parent_id": started.get("parent_id"),
        "root_id": started.get("root_id"),
        "created_at": min(created_at, started_at) if created_at else started_at,
    }
    if started.get("name"):
        defaults["name"] = started["name"]
    return values, defaults


def record_progress(url: str, *, task_id: str, percent: int, message: str | None) -> None:
    """Store a task's progress (0-100) and message; status PROGRESS."""
    with session_scope(url) as session:
        session.execute(
            update(TaskRecord)
            .where(TaskRecord.id == task_id)
            .values(status="PROGRESS", progress=percent, progress_message=message, updated_at=now())
        )


def succeeded_write(
    *,
    task_id: str,
    name: str,
    result: Any,
    started: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> RowWrite:
    """Mark a task SUCCESS with its result; *started* (the keyword arguments of
    `record_started`, when that write was deferred) is written in the same statement;
    *finished_at* when the write comes later than the end (the journal)."""
    values, defaults = _started_fields(started)
    return RowWrite.of(
        task_id,
        {
            **values,
            "status": "SUCCESS",
            "result": jsonable(result),
            "progress": 100,
            "finished_at": finished_at or now(),
            "error": None,
            "traceback": None,
        },
        {**defaults, "name": name},
    )


def failed_write(
    *,
    task_id: str,
    name: str,
    error: str,
    traceback: str | None,
    started: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> RowWrite:
    """Mark a task FAILURE with its error and traceback (*started*, *finished_at*: see
    record_succeeded)."""
    values, defaults = _started_fields(started)
    return RowWrite.of(
        task_id,
        {
            **values,
            "status": "FAILURE",
            "error": error,
            "traceback": traceback,
            "finished_at": finished_at or now(),
        },
        {**defaults, "name": name},
    )


def retry_write(
    *,
    task_id: str,
    name: str,
    error: str,
    retries: int,
    started: dict[str, Any] | None = None,
) -> RowWrite:
    """Mark a task RETRY: the count of retries so far and the error that caused this one.

    The retry message is published before this is written, so the next attempt may
    already have finished on another child: a final state is never overwritten.
    (*started*: see record_succeeded.)
    """
    values, defaults = _started_fields(started)
    return RowWrite.of(
        task_id,
        {**values, "status": "RETRY", "error": error, "retries": retries},
        {**defaults, "name": name},
        unless_final=True,
    )


def revoked_write(*, task_id: str, name: str, reason: str) -> RowWrite:
    """Mark a task REVOKED."""
    return RowWrite.of(
        task_id,
        {"status": "REVOKED", "error": reason, "finished_at": now()},
        {"name": name},
    )


def record_started(url: str, **kwargs: Any) -> None:
    apply(url, [started_write(**kwargs)])


def record_succeeded(url: str, **kwargs: Any) -> None:
    apply(url, [succeeded_write(**kwargs)])


def record_failed(url: str, **kwargs: Any) -> None:
    apply(url, [failed_write(**kwargs)])


def record_retry(url: str, **kwargs: Any) -> None:
    apply(url, [retry_write(**kwargs)])


def record_revoked(url: str, **kwargs: Any) -> None:
    apply(url, [revoked_write(**kwargs)])


# The writers a bulk write may name (the record journal's entries).
BULK_WRITERS: dict[str, Callable[..., RowWrite]] = {
    "record_succeeded": succeeded_write,
    "record_failed": failed_write,
    "record_retry": retry_write,
}


def write_many(url: str, writes: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Several final writes (writer name, keyword arguments) in one transaction, as if
    made one after the other (the record journal's bulk flush)."""
    rows = []
    for writer, kwargs in writes:
        build = BULK_WRITERS.get(writer)
        if build is None:
            raise ValueError(f"not a bulk writer: {writer!r}")
        rows.append(build(**kwargs))
    apply(url, rows)


def to_dict(record: TaskRecord) -> dict[str, Any]:
    """The public dict form of a record; timestamps as ISO 8601 strings."""
    data: dict[str, Any] = {}
    for key in RECORD_KEYS:
        value = getattr(record, key)
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        data[key] = value
    return data


def get_record(url: str, task_id: str) -> dict[str, Any] | None:
    """The record of *task_id* as a dict, or None."""
    with session_scope(url) as session:
        record = session.get(TaskRecord, task_id)
        return to_dict(record) if record else None


def list_records(
    url: str,
    *,
    status: str | None = None,
    name: str | None = None,
    since: datetime | None = None,
    root_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Records matching the filters, newest first."""
    query = select(TaskRecord).order_by(TaskRecord.created_at.desc()).limit(limit)
    if status:
        query = query.where(TaskRecord.status == status)
    if name:
        query = query.where(TaskRecord.name == name)
    if since:
        query = query.where(TaskRecord.created_at >= since)
    if root_id:
        query = query.where(TaskRecord.root_id == root_id)
    with session_scope(url) as session:
        return [to_dict(r) for r in session.scalars(query)]


def count_by_status(url: str) -> dict[str, int]:
    """How many records are in each state."""
    with session_scope(url) as session:
        rows = session.execute(select(TaskRecord.status, func.count()).group_by(TaskRecord.status))
        return {status: count for status, count in rows}


def ping(url: str) -> None:
    """Raise if the database cannot be reached."""
    with get_engine(url).connect() as conn:
        conn.exec_driver_sql("SELECT 1")
