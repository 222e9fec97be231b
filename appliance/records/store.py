"""Reads and writes of task records. Writers are called from Celery signal handlers."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from appliance.records.db import get_engine, session_scope
from appliance.records.models import TERMINAL_STATES, TaskRecord

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


def now() -> datetime:
    return datetime.now(UTC)


def jsonable(value: Any) -> Any:
    """*value* if it survives JSON, else its repr (a record never fails on a result)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# The writers run once or twice per task on the worker's hot path: they use SQLAlchemy
# Core on a pooled connection with statements built once per shape and bound per call
# (about 90 us a write on SQLite, against about 700 us through an ORM session).
_statements: dict[tuple[Any, ...], Any] = {}


def _insert_ignore_stmt(dialect: str, keys: tuple[str, ...]) -> Any:
    shape = ("insert", dialect, keys)
    stmt = _statements.get(shape)
    if stmt is None:
        module = postgresql if dialect == "postgresql" else sqlite
        stmt = _statements[shape] = (
            module.insert(TaskRecord)
            .values({key: bindparam(f"v_{key}") for key in keys})
            .on_conflict_do_nothing(index_elements=["id"])
        )
    return stmt


def _update_stmt(keys: tuple[str, ...], unless_final: bool) -> Any:
    shape = ("update", keys, unless_final)
    stmt = _statements.get(shape)
    if stmt is None:
        conditions = [TaskRecord.id == bindparam("v_task_id")]
        if unless_final:
            conditions.append(TaskRecord.status.notin_(TERMINAL_STATES))
        stmt = _statements[shape] = (
            update(TaskRecord)
            .where(*conditions)
            .values({key: bindparam(f"v_{key}") for key in keys})
        )
    return stmt


def _insert_ignore(conn: Connection, values: dict[str, Any]) -> None:
    keys = tuple(sorted(values))
    stmt = _insert_ignore_stmt(conn.dialect.name, keys)
    conn.execute(stmt, {f"v_{key}": values[key] for key in keys})


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
    stamp = now()
    with get_engine(url).begin() as conn:
        _insert_ignore(
            conn,
            {
                "id": task_id,
                "name": name,
                "args": jsonable(args),
                "kwargs": jsonable(kwargs),
                "queue": queue,
                "status": "PENDING",
                "progress": 0,
                "retries": 0,
                "parent_id": parent_id,
                "root_id": root_id,
                "created_at": stamp,
                "updated_at": stamp,
            },
        )


def record_published_many(url: str, rows: Sequence[dict[str, Any]]) -> None:
    """Write the PENDING records of a batch about to be published, in one transaction.

    Each row has the keyword arguments of `record_published`; existing records are kept.
    """
    if not rows:
        return
    stamp = now()
    values = [
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
    ]
    keys = tuple(sorted(values[0]))
    with get_engine(url).begin() as conn:
        stmt = _insert_ignore_stmt(conn.dialect.name, keys)
        conn.execute(stmt, [{f"v_{key}": row[key] for key in keys} for row in values])


def delete_records(url: str, task_ids: Sequence[str], chunk: int = 500) -> None:
    """Remove records (the part of a batch that was never published)."""
    with get_engine(url).begin() as conn:
        for start in range(0, len(task_ids), chunk):
            conn.execute(
                delete(TaskRecord).where(TaskRecord.id.in_(list(task_ids[start : start + chunk])))
            )


# A plan of one final write: the UPDATE's shape (its keys, whether it spares a final
# state), its parameters, and the row to insert when no row was updated.
_Plan = tuple[tuple[str, ...], bool, dict[str, Any], dict[str, Any]]
_plans: ContextVar[list[_Plan] | None] = ContextVar("appliance_records_plans", default=None)

# The writers a bulk write may name (the record journal's entries).
BULK_WRITERS = ("record_succeeded", "record_failed", "record_retry")


def write_many(url: str, writes: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Several writes (writer name, keyword arguments) in one transaction, as if made one
    after the other: each run of same-shaped UPDATEs is one executemany (the record
    journal's bulk flush); a run that updated fewer rows than it has (records of a
    producer that writes none) is made again one by one, inserting the missing rows."""
    plans: list[_Plan] = []
    token = _plans.set(plans)
    try:
        for writer, kwargs in writes:
            if writer not in BULK_WRITERS:
                raise ValueError(f"not a bulk writer: {writer!r}")
            globals()[writer](url, **kwargs)
    finally:
        _plans.reset(token)
    with get_engine(url).begin() as conn:
        counts = conn.dialect.supports_sane_multi_rowcount
        for (keys, unless_final), group in itertools.groupby(plans, key=lambda p: p[:2]):
            run = list(group)
            stmt = _update_stmt(keys, unless_final)
            many = [params for _, _, params, _ in run]
            if counts and len(run) > 1 and conn.execute(stmt, many).rowcount == len(run):
                continue
            for _, _, params, row in run:  # the same UPDATEs again: idempotent
                _execute_plan(conn, stmt, params, row)


def _execute_plan(conn: Connection, stmt: Any, params: dict[str, Any], row: dict[str, Any]) -> None:
    if getattr(conn.execute(stmt, params), "rowcount", 1) == 0:
        # Published by a producer that does not write records (e.g. plain Celery).
        _insert_ignore(conn, row)


def _update_or_insert(
    url: str,
    task_id: str,
    values: dict[str, Any],
    insert_defaults: dict[str, Any],
    unless_final: bool = False,
) -> None:
    values = {**values, "updated_at": now()}
    keys = tuple(sorted(values))
    params = {"v_task_id": task_id, **{f"v_{key}": values[key] for key in keys}}
    row = {
        "id": task_id,
        "created_at": values["updated_at"],
        "progress": 0,
        "retries": 0,
        **insert_defaults,
        **values,
    }
    plans = _plans.get()
    if plans is not None:
        plans.append((keys, unless_final, params, row))
        return
    with get_engine(url).begin() as conn:
        _execute_plan(conn, _update_stmt(keys, unless_final), params, row)


def record_started(
    url: str,
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
) -> None:
    """Mark a task STARTED on *worker* (never over a final state: a deferred STARTED write
    may come after the task ended, see records.signals.DeferredStarted)."""
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
        }
    )
    _update_or_insert(url, task_id, {"status": "STARTED", **values}, defaults, unless_final=True)


def _started_fields(started: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The columns a STARTED write sets, and those it fills only in a new row, from the
    keyword arguments of `record_started` (none when *started* is None)."""
    if not started:
        return {}, {}
    values = {
        "started_at": started.get("started_at") or now(),
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


def record_succeeded(
    url: str,
    *,
    task_id: str,
    name: str,
    result: Any,
    started: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> None:
    """Mark a task SUCCESS with its result; *started* (the keyword arguments of
    `record_started`, when that write was deferred) is written in the same statement;
    *finished_at* when the write comes later than the end (the journal)."""
    values, defaults = _started_fields(started)
    _update_or_insert(
        url,
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


def record_failed(
    url: str,
    *,
    task_id: str,
    name: str,
    error: str,
    traceback: str | None,
    started: dict[str, Any] | None = None,
    finished_at: datetime | None = None,
) -> None:
    """Mark a task FAILURE with its error and traceback (*started*, *finished_at*: see
    record_succeeded)."""
    values, defaults = _started_fields(started)
    _update_or_insert(
        url,
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


def record_retry(
    url: str,
    *,
    task_id: str,
    name: str,
    error: str,
    retries: int,
    started: dict[str, Any] | None = None,
) -> None:
    """Mark a task RETRY: the count of retries so far and the error that caused this one.

    The retry message is published before this is written, so the next attempt may
    already have finished on another child: a final state is never overwritten.
    (*started*: see record_succeeded.)
    """
    values, defaults = _started_fields(started)
    _update_or_insert(
        url,
        task_id,
        {**values, "status": "RETRY", "error": error, "retries": retries},
        {**defaults, "name": name},
        unless_final=True,
    )


def record_revoked(url: str, *, task_id: str, name: str, reason: str) -> None:
    """Mark a task REVOKED."""
    _update_or_insert(
        url,
        task_id,
        {"status": "REVOKED", "error": reason, "finished_at": now()},
        {"name": name},
    )


def revoke_many(url: str, task_ids: Sequence[str], reason: str, chunk: int = 500) -> int:
    """Mark existing records REVOKED in bulk (e.g. after a queue purge); return how many."""
    changed = 0
    stamp = now()
    with session_scope(url) as session:
        for start in range(0, len(task_ids), chunk):
            result = session.execute(
                update(TaskRecord)
                .where(TaskRecord.id.in_(list(task_ids[start : start + chunk])))
                .values(status="REVOKED", error=reason, finished_at=stamp, updated_at=stamp)
            )
            changed += int(getattr(result, "rowcount", 0) or 0)
    return changed


def delete_record(url: str, task_id: str) -> None:
    """Remove a record (a publish that failed leaves no PENDING record behind)."""
    with session_scope(url) as session:
        session.execute(delete(TaskRecord).where(TaskRecord.id == task_id))


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


def ping(url: str) -> None:
    """Raise if the database cannot be reached."""
    with get_engine(url).connect() as conn:
        conn.exec_driver_sql("SELECT 1")


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
