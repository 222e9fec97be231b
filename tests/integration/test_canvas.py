"""Canvas: chains, groups and chords of demo tasks, each member with its own record.

Given a real worker on the production profile (acks late, bounded result_expires), when a
workflow is submitted, then it ends with the right result and every member's record
carries the workflow's root id and its parent, so an operator can follow it with
`appliance tasks list --root ID` and `appliance tasks show ID --json`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import chain, chord, group

import appliance
from appliance import api
from appliance.celery_app import app
from appliance.config.settings import get_settings
from appliance.errors import UnknownTaskError
from appliance.records import store
from appliance.tasks import demo
from tests.helpers.processes import run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory

FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def _members(root_id: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The records of a workflow, once *count* of them are final; oldest first."""

    def final() -> list[dict[str, Any]] | None:
        url = get_settings().effective_database_url
        records = store.list_records(url, root_id=root_id, limit=100)
        done = [r for r in records if r["status"] in FINAL]
        return sorted(done, key=lambda r: r["created_at"]) if len(done) >= count else None

    found: list[dict[str, Any]] = wait_until(final, timeout, f"{count} final records of {root_id}")
    return found


def test_chain_group_and_chord_members_share_the_workflow_root_id(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """Given a worker, when a chain, a group and a chord are submitted with
    api.submit_workflow, then each gives the right result and each member's record
    names the workflow's root id and the task that published it."""
    start_worker(api_env, "-c", "2")

    chain_id = api.submit_workflow(chain(demo.add.s(1, 2), demo.add.s(3), demo.add.s(4)))
    assert api.wait(chain_id, 60) == 10
    first, second, third = _members(chain_id, 3)
    assert [r["result"] for r in (first, second, third)] == [3, 6, 10]
    assert (first["parent_id"], second["parent_id"], third["parent_id"]) == (
        None,
        first["id"],
        second["id"],
    )
    assert third["id"] == chain_id  # the root id is the id whose result is the chain's

    group_id = api.submit_workflow(group(demo.add.s(1, 2), demo.add.s(3, 4)))
    members = _members(group_id, 2)
    assert sorted(r["result"] for r in members) == [3, 7]
    assert {r["root_id"] for r in members} == {group_id}

    chord_id = api.submit_workflow(
        chord([demo.add.s(1, 2), demo.add.s(3, 4), demo.add.s(5, 6)], demo.total.s())
    )
    assert api.wait(chord_id, 60) == 21
    records = _members(chord_id, 4)
    callback = next(r for r in records if r["id"] == chord_id)
    header = [r for r in records if r["id"] != chord_id]
    assert (callback["name"], callback["result"]) == ("demo.sum", 21)
    assert sorted(r["result"] for r in header) == [3, 7, 11]
    assert {r["root_id"] for r in records} == {chord_id}
    assert callback["parent_id"] in {r["id"] for r in header}  # the member that finished last

    listed = run_cli(api_env, "tasks", "list", "--root", chord_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["id"] for r in json.loads(listed.stdout)} == {r["id"] for r in records}
    shown = run_cli(api_env, "tasks", "show", header[0]["id"], "--json")
    assert json.loads(shown.stdout)["root_id"] == chord_id


def test_cli_submit_of_a_chord_ends_success_with_the_sum(
    appliance_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """Given a worker, when `appliance submit demo.add_chord` is given three pairs, then
    it prints 21, and the three demo.add members and the callback all have its id as
    their root id (the callback runs under that very id)."""
    start_worker(appliance_env, "-c", "2")
    submitted = run_cli(
        appliance_env,
        "submit",
        "demo.add_chord",
        "--args",
        "[[1, 2], [3, 4], [5, 6]]",
        "--wait",
        "60",
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "21"
    chord_id = submitted.stderr.split(" as ")[-1].strip()

    listed = run_cli(appliance_env, "tasks", "list", "--root", chord_id, "--json")
    records = json.loads(listed.stdout)
    members = [r for r in records if r["name"] == "demo.add"]
    assert sorted(r["result"] for r in members) == [3, 7, 11]
    assert all(r["status"] == "SUCCESS" for r in records)
    for member in members:
        shown = json.loads(run_cli(appliance_env, "tasks", "show", member["id"], "--json").stdout)
        assert (shown["root_id"], shown["parent_id"]) == (chord_id, chord_id)
    own = json.loads(run_cli(appliance_env, "tasks", "show", chord_id, "--json").stdout)
    assert (own["status"], own["result"], own["root_id"]) == ("SUCCESS", 21, chord_id)

    bad = run_cli(appliance_env, "submit", "demo.add_chord", "--args", "[[1]]", "--wait", "60")
    assert bad.returncode == 1 and "pairs" in bad.stderr


def test_a_failing_member_calls_the_error_callback_with_what_failed(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """Given a worker, when a member of a chain or a chord fails and the workflow has
    demo.on_error linked, then the callback gets its own record, child of the failed
    task, whose result names that task and its error; the rest of a chain never runs."""
    start_worker(api_env, "-c", "2")

    failing = demo.calculate.s(2, "power")
    chain_id = api.submit_workflow(
        chain(demo.add.s(1, 2), failing, demo.add.s(1)).on_error(demo.on_error.s())
    )
    records = _members(chain_id, 3)
    names = [r["name"] for r in records]
    assert names == ["demo.add", "demo.calculate", "demo.on_error"]  # the last step never ran
    failed, callback = records[1], records[2]
    assert failed["status"] == "FAILURE"
    assert callback["parent_id"] == failed["id"]
    assert callback["result"]["task_id"] == failed["id"]
    assert callback["result"]["name"] == "demo.calculate"
    assert "ValueError: unknown operation 'power'" in callback["result"]["error"]

    chord_id = api.submit_workflow(
        chord([demo.add.s(1, 2), demo.calculate.s(1, 2, "power")], demo.total.s()).on_error(
            demo.on_error.s()
        )
    )
    # The failed member and the callback that can no longer run are both reported.
    records = _members(chord_id, 4)
    reports = [r["result"] for r in records if r["name"] == "demo.on_error"]
    failed_member = next(r for r in records if r["name"] == "demo.calculate")
    assert {r["task_id"] for r in reports} == {failed_member["id"], chord_id}
    errors = " | ".join(r["error"] for r in reports)
    assert "ValueError: unknown operation 'power'" in errors and "ChordError" in errors
    assert appliance.get_task(chord_id) is None  # the callback was never published


def test_a_workflow_naming_an_unknown_task_queues_nothing(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    """Given no worker, when a workflow names a task nobody has, then submit_workflow
    refuses it with the one-line error and queues nothing."""
    with pytest.raises(UnknownTaskError, match=r"no\.such\.task"):
        api.submit_workflow(chain(demo.add.s(1, 2), app.signature("no.such.task")))
    assert clean_redis.client().llen("default") == 0
    assert store.list_records(get_settings().effective_database_url) == []
