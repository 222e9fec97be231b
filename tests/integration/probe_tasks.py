"""Tasks only the tests load (APPLIANCE_TASK_MODULES=tests.integration.probe_tasks)."""

from __future__ import annotations

import os

from appliance.celery_app import app


@app.task(name="probe.env")
def env(name: str) -> str | None:
    """The value of an environment variable inside the pool child that runs the task."""
    return os.environ.get(name)


@app.task(name="probe.needs_file")
def needs_file(path: str) -> str:
    """Fail until *path* exists (an operator fixes the cause, then retries)."""
    with open(path) as handle:
        return handle.read()
