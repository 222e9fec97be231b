"""Queue-dedicated workers: routes by task-name pattern, `-Q` and worker groups.

Given APPLIANCE_QUEUES=default,urgent,email, routes sending demo.add to urgent and
demo.noop to email, and one worker group per queue (as the systemd template instances
appliance-worker@urgent and appliance-worker@email run them): a worker on `-Q urgent`
runs only urgent work, and email work waits until an `--group email` worker starts.
"""

from __future__ import annotations

import json

from tests.helpers.processes import is_node_of, run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _record(env: dict[str, str], task_id: str) -> dict[str, object]:
    shown = run_cli(env, "tasks", "show", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record: dict[str, object] = json.loads(shown.stdout)
    return record


def test_routed_tasks_run_only_on_workers_of_their_queue(
    appliance_env: dict[str, str], start_worker: WorkerFactory, clean_redis: RedisServer
) -> None:
    env = dict(
        appliance_env,
        APPLIANCE_QUEUES="default,urgent,email",
        APPLIANCE_ROUTES="demo.add=urgent;demo.no*=email",
        APPLIANCE_WORKER_GROUPS="default=default;urgent=urgent;email=email",
    )
    start_worker(env, "-Q", "urgent", "-c", "1", name="urgent")

    queued = run_cli(env, "submit", "demo.noop")
    assert queued.returncode == 0, queued.stderr
    email_id = queued.stdout.strip()
    urgent = run_cli(env, "submit", "demo.add", "--args", "[1, 2]", "--wait", "60")
    assert urgent.returncode == 0 and urgent.stdout.strip() == "3", urgent.stderr
    urgent_id = urgent.stderr.split(" as ")[-1].strip()
    assert _record(env, urgent_id)["queue"] == "urgent"

    # The urgent worker has been consuming all along; the email task is still waiting.
    assert clean_redis.client().llen("email") == 1
    waiting = _record(env, email_id)
    assert (waiting["status"], waiting["queue"]) == ("PENDING", "email")

    start_worker(env, "--group", "email", "-c", "1", name="email")
    done = wait_until(
        lambda: (r := _record(env, email_id))["status"] == "SUCCESS" and r,
        60,
        "the email worker to run the email task",
    )
    assert is_node_of("email", str(done["worker"])), done["worker"]
    assert clean_redis.client().llen("email") == 0
