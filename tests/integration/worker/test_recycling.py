"""Recycling: pool children are replaced after N tasks and above a unique-memory limit.

Real `appliance worker` processes on a real redis-server; a task reports the pid of the
pool child that ran it.
"""

from __future__ import annotations

import appliance
from appliance import api
from tests.helpers.processes import wait_until
from tests.integration import hog_tasks
from tests.integration.conftest import WorkerFactory


def _pid_of(name: str, *args: object) -> int:
    return (
        int(api.wait(appliance.submit(name, args=list(args)), 60)["pid"])
        if (name == "appliance.canary")
        else int(api.wait(appliance.submit(name, args=list(args)), 60))
    )


def test_a_child_is_replaced_after_max_tasks(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    worker = start_worker(api_env, "-c", "1", "--max-tasks-per-child", "3")
    pids = [_pid_of("appliance.canary") for _ in range(9)]
    assert len(set(pids)) >= 3
    assert pids[:3] == [pids[0]] * 3  # jitter is ±10 %: a limit of 3 stays 3
    wait_until(
        lambda: (
            "replacing pool child" in worker.output() or "replacing consumer" in worker.output()
        ),
        30,
        "a recycle logged",
    )
    assert "ran 3 tasks (limit 3)" in worker.output()


def test_memory_limit_counts_a_childs_own_memory_not_what_it_shares(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    # Given a main process with 150 MB of ballast and a 100 MB limit per child: every
    # child's RSS is above the limit from its start, its unique memory far below.
    env = dict(api_env, APPLIANCE_TASK_MODULES="tests.integration.hog_tasks", HOG_BALLAST_MB="150")
    worker = start_worker(
        env, "-c", "1", "--max-tasks-per-child", "0", "--max-memory-per-child", "102400"
    )
    # Then a fresh child is not replaced after each task (celery #4125)...
    first = {_pid_of(hog_tasks.pid.name) for _ in range(5)}
    assert len(first) == 1
    # ...but one that keeps 150 MB of its own is, right after that task.
    assert _pid_of(hog_tasks.hold.name, 150) in first
    assert _pid_of(hog_tasks.pid.name) not in first
    worker.wait_for_output("above the limit 102400 KiB", timeout=30)
    assert "a fresh pool child uses" in worker.output()
