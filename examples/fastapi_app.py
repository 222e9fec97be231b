"""A FastAPI front end to the appliance: submit, status and revoke over HTTP.

    pip install 'celery-appliance[examples]' uvicorn
    uvicorn examples.fastapi_app:app        # with the workers' APPLIANCE_* settings

- ``POST /tasks`` {name, args, kwargs, queue?} submits; 202 with the id, 400 with the
  one-line reason for an unknown task or queue, 503 when Redis is down.
- ``GET /tasks/{id}`` reads the task record: status, progress, result or error; 404 if
  there is none.
- ``DELETE /tasks/{id}[?terminate=true]`` revokes it (kept in Redis, so a worker that
  starts later honours it too); 404 if there is no record.

The endpoints are plain ``def``: FastAPI runs them in its thread pool, and submit is a
few milliseconds of blocking Redis and database I/O.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import appliance
from appliance import operations
from appliance.config.settings import get_settings
from appliance.errors import ApplianceError, BrokerUnavailableError, DatabaseUnavailableError

app = FastAPI(title="Celery Appliance example")

# What a client sees of a record (the full set is `appliance tasks show --json`).
PUBLIC_KEYS = (
    "id",
    "name",
    "status",
    "progress",
    "progress_message",
    "result",
    "error",
    "retries",
    "queue",
    "created_at",
    "started_at",
    "finished_at",
)


class TaskIn(BaseModel):
    """A task to submit."""

    name: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = None


def _record(task_id: str) -> dict[str, Any]:
    record = appliance.get_task(task_id)
    if record is None:
        raise HTTPException(404, f"no task with id {task_id}")
    return record


@app.post("/tasks", status_code=202)
def submit_task(task: TaskIn) -> dict[str, Any]:
    """Submit a task; return its id."""
    try:
        task_id = appliance.submit(task.name, args=task.args, kwargs=task.kwargs, queue=task.queue)
    except (BrokerUnavailableError, DatabaseUnavailableError) as exc:
        raise HTTPException(503, str(exc)) from None
    except ApplianceError as exc:  # unknown task or queue
        raise HTTPException(400, str(exc)) from None
    return {"id": task_id, "status": "PENDING"}


@app.get("/tasks/{task_id}")
def get_task(task_id: str) -> dict[str, Any]:
    """Status, progress and result of a task, from its record."""
    record = _record(task_id)
    return {key: record[key] for key in PUBLIC_KEYS}


@app.delete("/tasks/{task_id}", status_code=202)
def revoke_task(task_id: str, terminate: bool = False) -> dict[str, Any]:
    """Revoke a task (with ``terminate=true`` also kill it if it runs)."""
    _record(task_id)
    try:
        operations.revoke(get_settings(), task_id, terminate=terminate)
    except BrokerUnavailableError as exc:
        raise HTTPException(503, str(exc)) from None
    return {"id": task_id, "status": _record(task_id)["status"]}
