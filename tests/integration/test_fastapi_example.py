"""examples/fastapi_app.py against a real worker, through FastAPI's TestClient.

Given the example app on the test Redis and records, then POST /tasks submits, GET
/tasks/{id} reads the record, DELETE /tasks/{id} revokes; unknown ids are 404 and
unknown task names 400 with the one-line message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from examples.fastapi_app import app
from tests.helpers.processes import wait_until
from tests.integration.conftest import WorkerFactory


@pytest.fixture
def client(api_env: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def _status(client: TestClient, task_id: str) -> Any:
    return client.get(f"/tasks/{task_id}").json().get("status")


def test_submit_read_and_revoke_over_http(
    client: TestClient, api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    revoked = client.post("/tasks", json={"name": "demo.add", "args": [1, 1]})
    assert revoked.status_code == 202
    revoked_id = revoked.json()["id"]
    deleted = client.delete(f"/tasks/{revoked_id}")
    assert deleted.status_code == 202
    assert deleted.json() == {"id": revoked_id, "status": "REVOKED"}

    start_worker(api_env, "-c", "1")  # starts after the revoke, honours it
    posted = client.post(
        "/tasks", json={"name": "demo.progress", "kwargs": {"steps": 2, "delay": 0.05}}
    )
    task_id = posted.json()["id"]
    wait_until(lambda: _status(client, task_id) == "SUCCESS", 60, "SUCCESS over HTTP")
    body = client.get(f"/tasks/{task_id}").json()
    assert (body["result"], body["progress"], body["progress_message"]) == (
        {"steps": 2},
        100,
        "step 2 of 2",
    )
    queued = client.post("/tasks", json={"name": "demo.add", "args": [2, 3], "queue": "high"})
    assert queued.status_code == 202
    # The worker consumes default, high and low: the revoked task was skipped, not run.
    wait_until(lambda: _status(client, queued.json()["id"]) == "SUCCESS", 60, "the add")
    assert client.get(f"/tasks/{queued.json()['id']}").json()["queue"] == "high"
    assert client.get(f"/tasks/{revoked_id}").json()["result"] is None


def test_unknown_ids_are_404_and_unknown_names_400(client: TestClient) -> None:
    assert client.get("/tasks/no-such-id").status_code == 404
    assert client.delete("/tasks/no-such-id").status_code == 404
    refused = client.post("/tasks", json={"name": "no.such.task"})
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "no.such.task" in detail and "\n" not in detail
    bad_queue = client.post("/tasks", json={"name": "demo.add", "queue": "nowhere"})
    assert bad_queue.status_code == 400 and "nowhere" in bad_queue.json()["detail"]
    assert client.post("/tasks", json={"args": [1]}).status_code == 422
