"""appliance.submit_many: records in one transaction, messages in one pipeline per chunk."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

import appliance
from appliance import bulk
from appliance.config.settings import get_settings
from appliance.errors import SubmitOptionError, UnknownTaskError
from appliance.records import store
from tests.helpers.processes import ApplianceProcess, free_port, wait_until
from tests.helpers.redis_server import RedisServer


def test_a_bulk_submit_runs_every_task_once_with_its_arguments(
    api_env: dict[str, str],
    clean_redis: RedisServer,
    start_worker: Callable[..., ApplianceProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bulk, "CHUNK", 7)  # several pipelines, the last one partial
    calls = [{"args": [i, 1]} for i in range(20)] + [{"kwargs": {"x": 100, "y": 1}}]
    ids = appliance.submit_many("demo.add", calls)
    assert len(set(ids)) == 21
    assert clean_redis.client().llen("default") == 21
    url = get_settings().effective_database_url
    pending = {r["id"]: r for r in store.list_records(url, limit=100)}
    assert set(pending) == set(ids)
    assert {r["status"] for r in pending.values()} == {"PENDING"}
    assert pending[ids[3]]["args"] == [3, 1] and pending[ids[3]]["queue"] == "default"

    start_worker(api_env, "-c", "2")

    def done() -> bool:
        return all((appliance.get_task(i) or {}).get("status") == "SUCCESS" for i in ids)

    wait_until(done, 60, "every bulk-submitted task SUCCESS")
    results = [appliance.get_task(i)["result"] for i in ids]  # type: ignore[index]
    assert results == [i + 1 for i in range(20)] + [101]


def test_a_malformed_call_or_unknown_task_submits_nothing(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    with pytest.raises(SubmitOptionError, match="call 1"):
        appliance.submit_many("demo.add", [{"args": [1, 2]}, {"argz": [1]}])
    with pytest.raises(SubmitOptionError, match="'args' must be a list"):
        appliance.submit_many("demo.add", [{"args": "12"}])
    with pytest.raises(UnknownTaskError):
        appliance.submit_many("no.such.task", [{}])
    assert clean_redis.client().llen("default") == 0
    assert store.list_records(get_settings().effective_database_url) == []


_DOWN = """
import appliance
from appliance.bulk import BulkSubmitError
try:
    appliance.submit_many("demo.add", [{"args": [1, 2]}] * 5)
except BulkSubmitError as exc:
    print(exc.exit_code, len(exc.accepted), len(exc.uncertain), exc, sep="|")
"""


def test_a_broker_that_refuses_connections_gets_one_error_and_leaves_no_record(
    api_env: dict[str, str],
) -> None:
    env = dict(api_env, APPLIANCE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    out = subprocess.run(
        [sys.executable, "-c", _DOWN], env=env, capture_output=True, text=True, timeout=60
    )
    code, accepted, uncertain, message = out.stdout.strip().split("|", 3)
    assert (code, accepted, uncertain) == ("69", "0", "0"), out.stdout + out.stderr
    assert "fix:" in message and "\n" not in message
    assert store.list_records(get_settings().effective_database_url) == []
