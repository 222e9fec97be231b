"""Built-in tasks: record cleanup, the end-to-end canary and the reconciler."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.celery_app import app
from appliance.config.settings import get_settings
from appliance.core.constants import ENQUEUED_AT_HEADER
from appliance.records import maintenance


@app.task(name="appliance.cleanup_records", bind=True)
def cleanup_records(self: Any, retention_days: int | None = None) -> int:
    """Delete finished records older than the retention; return how many went.

    Records still PENDING/STARTED/RETRY are kept whatever their age: they are
    evidence of lost or stuck work, which the health check reports.
    """
    settings = get_settings()
    days = retention_days if retention_days is not None else settings.record_retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    return maintenance.delete_finished_before(settings.effective_database_url, cutoff)


@app.task(name="appliance.canary", bind=True)
def canary(self: Any) -> dict[str, Any]:
    """End-to-end probe: who ran it, from which queue, and when."""
    started = time.time()
    request = self.request
    headers = getattr(request, "headers", None) or {}
    enqueued = getattr(request, ENQUEUED_AT_HEADER, None) or headers.get(ENQUEUED_AT_HEADER)
    return {
        "hostname": request.hostname,
        "pid": os.getpid(),
        "queue": (request.delivery_info or {}).get("routing_key"),
        "enqueued_at": enqueued,
        "started_at": started,
        "finished_at": time.time(),
    }


@app.task(name="appliance.reconcile", bind=True)
def reconcile(self: Any, min_age: float | None = None) -> dict[str, Any]:
    """Re-publish tasks whose record is PENDING but whose message Redis lost.

    Run by beat every minute (`appliance-reconcile`); see appliance/recovery/reconcile.py.
    Returns the run's report (counts and the re-published ids).
    """
    from appliance.recovery import reconcile as reconciler

    return reconciler.reconcile(get_settings(), min_age=min_age).to_dict()
