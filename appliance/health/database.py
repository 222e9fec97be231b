"""Checks that need the task-record database (only with `appliance health --db`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.core import constants as C
from appliance.core.text import mask_url
from appliance.health.config import HealthConfig
from appliance.health.verdict import CRITICAL, OK, WARNING, Check


def run_database_checks(cfg: HealthConfig, live_workers: set[str]) -> list[Check]:
    """Database reachable, schema current, tasks stuck past their hard limit or orphaned."""
    from sqlalchemy import select

    from appliance.errors import ApplianceError, ConfigError
    from appliance.records import schema
    from appliance.records.db import session_scope, translate_errors
    from appliance.records.models import TaskRecord

    url = cfg.database_url
    try:
        state = schema.schema_state(url)
    except ConfigError:
        raise  # the checker's own failure (a missing driver): UNKNOWN with the fix
    except ApplianceError as exc:
        return [Check("database", CRITICAL, str(exc))]
    if not state.is_current:
        return [
            Check(
                "database",
                CRITICAL,
                f"schema at {state.current or 'nothing'}, needs {state.head}; "
                "fix: appliance db upgrade",
            )
        ]
    checks = [Check("database", OK, f"database {mask_url(url)} reachable, schema {state.head}")]
    limit = cfg.task_time_limit + C.STOP_TIMEOUT_MARGIN_SECONDS
    cutoff = datetime.now(UTC) - timedelta(seconds=limit)
    try:
        with translate_errors(url), session_scope(url) as session:
            running: list[Any] = list(
                session.execute(
                    select(TaskRecord.id, TaskRecord.worker, TaskRecord.started_at).where(
                        TaskRecord.status.in_(["STARTED", "PROGRESS"])
                    )
                )
            )
    except ApplianceError as exc:
        return [Check("database", CRITICAL, str(exc))]

    def aware(stamp: datetime) -> datetime:
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    overdue = [r for r in running if r.started_at and aware(r.started_at) < cutoff]
    orphaned = [
        r for r in running if r.worker and r.worker not in live_workers and r not in overdue
    ]
    status = CRITICAL if overdue else (WARNING if orphaned else OK)
    message = f"{len(overdue)} task(s) running past the hard time limit ({cfg.task_time_limit}s)"
    if orphaned:
        message += f", {len(orphaned)} on workers with no heartbeat"
    if status:
        message += "; fix: appliance tasks list --status STARTED, then retry or revoke them"
    checks.append(Check("stuck_tasks", status, message, len(overdue) + len(orphaned)))
    return checks
