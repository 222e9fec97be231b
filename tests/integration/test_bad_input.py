"""Bad input against a real worker and Redis: wrong arity ends FAILURE with the TypeError
text (never stuck PENDING), an oversized payload is refused before publish (nothing in
Redis, no record), and the worker keeps serving."""

from __future__ import annotations

import json

import pytest

from appliance.records import store
from tests.helpers.processes import run_cli, wait_until
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--args", "[1]"], "missing 1 required positional argument: 'y'"),
        (["--args", "[1, 2, 3]"], "takes 2 positional arguments but 3 were given"),
        (["--args", "[1, 2]", "--kwargs", '{"z": 1}'], "unexpected keyword argument 'z'"),
    ],
    ids=["too-few", "too-many", "unknown-kwarg"],
)
def test_wrong_arity_ends_failure_with_the_type_error(
    appliance_env: dict[str, str],
    clean_redis: RedisServer,
    start_worker: WorkerFactory,
    options: list[str],
    says: str,
) -> None:
    worker = start_worker(appliance_env, "-c", "1")
    url = appliance_env["APPLIANCE_DATABASE_URL"]
    result = run_cli(appliance_env, "submit", "demo.add", *options, "--wait", "60", timeout=120)
    assert result.returncode == 1, result.stderr  # TASK_FAILED
    task_id = result.stderr.split(" as ", 1)[1].split()[0]
    error_line = result.stderr.strip().splitlines()[-1]
    assert error_line.startswith("appliance: error: ") and "TypeError" in error_line, error_line
    assert says in error_line

    record = store.get_record(url, task_id)
    assert record is not None
    assert record["status"] == "FAILURE" and record["finished_at"] is not None
    assert record["error"].startswith("TypeError: ") and says in record["error"]

    # Nothing left behind and the worker keeps serving.
    assert worker.proc.poll() is None
    assert clean_redis.client().llen("default") == 0
    ok = run_cli(appliance_env, "submit", "demo.add", "--args", "[2, 3]", "--wait", "60")
    assert (ok.returncode, ok.stdout.strip()) == (0, "5"), ok.stderr


@pytest.mark.timeout(300)
def test_an_oversized_payload_is_refused_before_publish(
    appliance_env: dict[str, str], clean_redis: RedisServer, start_worker: WorkerFactory
) -> None:
    env = dict(appliance_env, APPLIANCE_MAX_PAYLOAD_BYTES="1000")
    url = env["APPLIANCE_DATABASE_URL"]
    assert run_cli(env, "db", "upgrade").returncode == 0
    refused = run_cli(env, "submit", "demo.sum", "--args", json.dumps([list(range(500))]))
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "over APPLIANCE_MAX_PAYLOAD_BYTES=1000" in line and "fix:" in line
    client = clean_redis.client()
    assert client.llen("default") == 0 and store.list_records(url) == []

    start_worker(env, "-c", "1")
    wait_until(lambda: client.keys("appliance:worker:*"), 60, "the worker's heartbeat")
    ok = run_cli(env, "submit", "demo.sum", "--args", json.dumps([list(range(50))]), "--wait", "60")
    assert (ok.returncode, ok.stdout.strip()) == (0, str(sum(range(50)))), ok.stderr
