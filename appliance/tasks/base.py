"""The base class of every task the appliance hosts."""

from __future__ import annotations

from celery import Task


class ApplianceTask(Task):  # type: ignore[misc]
    """Celery's Task whose worker-side requests count their outcomes (heartbeats, STATUS)
    and stop redelivering a task that keeps losing its pool child (dead letter)."""

    Request = "appliance.worker.lost:Request"
