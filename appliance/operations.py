"""Operator actions on tasks: retry failed work, revoke, purge old records."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from appliance.config.settings import Settings
from appliance.core import constants as C
from appliance.core import keys
from appliance.errors import ApplianceError, RecordNotFoundError

RETRYABLE = ("FAILURE", "REVOKED")


def retry(settings: Settings, task_id: str, *, force: bool = False) -> str:
    """Republish a finished task with its original name, arguments and queue; return its id.

    A FAILURE is republished under the same id (its record goes back to PENDING and the
    old result is forgotten); a REVOKED task gets a new id, since workers keep
    discarding a revoked id.
    """
    from appliance import api
    from appliance.records import maintenance, store

    url = settings.effective_database_url
    record = store.get_record(url, task_id)
    if record is None:
        raise RecordNotFoundError(f"no task record with id {task_id}; fix: check the id")
    if record["status"] not in RETRYABLE and not force:
        if record["status"] == "SUCCESS":
            raise ApplianceError(
                f"task {task_id} already succeeded (SUCCESS), so there is nothing to retry; "
                "fix: pass --force to run it again anyway"
            )
        raise ApplianceError(
            f"task {task_id} is {record['status']}, not FAILURE or REVOKED: it has not "
            "finished yet; fix: wait for it to finish, or pass --force to run it again anyway"
        )
    queue = record["queue"] if record["queue"] in settings.queues else None
    args, kwargs = record["args"] or [], record["kwargs"] or {}
    if record["status"] == "REVOKED":
        return api.submit(record["name"], args=args, kwargs=kwargs, queue=queue)
    from celery.result import AsyncResult

    from appliance.celery_app import load_tasks

    AsyncResult(task_id, app=load_tasks()).forget()
    maintenance.reset_for_retry(url, task_id)
    try:
        return api.submit(record["name"], args=args, kwargs=kwargs, queue=queue, task_id=task_id)
    except ApplianceError:
        store.record_failed(
            url,
            task_id=task_id,
            name=record["name"],
            error=record["error"] or "",
            traceback=record["traceback"],
        )
        raise


def retry_failed(
    settings: Settings, *, name: str | None = None, since: datetime | None = None, limit: int = 1000
) -> list[tuple[str, str]]:
    """Retry every FAILURE record matching the filters; return (old id, new id) pairs."""
    from appliance.records import store

    records = store.list_records(
        settings.effective_database_url, status="FAILURE", name=name, since=since, limit=limit
    )
    return [(r["id"], retry(settings, r["id"])) for r in records]


def revoke(
    settings: Settings, task_id: str, *, terminate: bool = False, must_exist: bool = False
) -> dict[str, Any] | None:
    """Revoke a task: broadcast to running workers, persist for workers that start later,
    and mark its record REVOKED unless it already finished or (without *terminate*) is
    running. Return its record as it was before, or None when it has none.

    With *must_exist*, a task id without a record is RecordNotFoundError and nothing is
    revoked (a mistyped id); without it, such an id is revoked all the same (a task sent
    by a client that writes no records).
    """
    import redis

    from appliance.broker.admin import client, unavailable
    from appliance.celery_app import load_tasks
    from appliance.records import store
    from appliance.records.db import translate_errors

    url = settings.effective_database_url
    with translate_errors(url):
        before = store.get_record(url, task_id)
    if before is None and must_exist:
        raise RecordNotFoundError(
            f"no task record with id {task_id}, so nothing was revoked; fix: check the id "
            "(`appliance tasks list`), or pass --force to revoke it anyway (a task sent by a "
            "client that writes no records)"
        )
    now = time.time()
    try:
        pipe = client(settings).pipeline(transaction=True)
        pipe.zadd(keys.REVOKED_KEY, {task_id: now})
        pipe.zremrangebyscore(keys.REVOKED_KEY, 0, now - C.REVOKED_KEEP_SECONDS)
        if terminate:
            pipe.zadd(keys.TERMINATE_KEY, {task_id: now})
            pipe.zremrangebyscore(keys.TERMINATE_KEY, 0, now - C.TERMINATE_KEEP_SECONDS)
        pipe.execute()
        load_tasks().control.revoke(task_id, terminate=terminate, signal="SIGTERM")
    except (redis.RedisError, OSError) as exc:
        raise unavailable(settings, exc) from None
    with translate_errors(url):
        record = store.get_record(url, task_id)
        if record is not None and record["status"] not in C.TERMINAL_STATES:
            if record["status"] in ("STARTED", "PROGRESS") and not terminate:
                return record  # it runs to the end; only its redeliveries are discarded
            reason = "terminated by operator" if terminate else "revoked by operator"
            store.record_revoked(url, task_id=task_id, name=record["name"], reason=reason)
    return record if record is not None else before


def persisted_revokes(redis_client: Any) -> list[str]:
    """Ids revoked within the keep period (a starting worker adds them to its revoked set)."""
    cutoff = time.time() - C.REVOKED_KEEP_SECONDS
    return [i.decode() for i in redis_client.zrangebyscore(keys.REVOKED_KEY, cutoff, "+inf")]


def purge_records(
    settings: Settings,
    cutoff: datetime,
    statuses: tuple[str, ...],
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
    batch: int = 1000,
) -> int:
    """Delete records created before *cutoff* in *statuses*, in batches; return how many."""
    from appliance.records import maintenance

    url = settings.effective_database_url
    total = maintenance.count_records(url, before=cutoff, statuses=statuses)
    batches: Iterator[int] = iter(range(0, total, batch))
    deleted = 0
    for _ in progress(batches) if progress else batches:
        gone = maintenance.delete_batch(url, before=cutoff, statuses=statuses, limit=batch)
        deleted += gone
        if gone == 0:
            break
    return deleted
