"""ETA and countdown: a delayed task runs no earlier than asked, and a delay Redis cannot
keep (beyond the visibility timeout, celery #5306 and #5935) is refused at submit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import appliance
from appliance import api
from appliance.config.settings import get_settings
from appliance.errors import SubmitOptionError
from appliance.records import store
from tests.helpers.processes import run_cli
from tests.helpers.redis_server import RedisServer
from tests.integration.conftest import WorkerFactory


def _stamp(task_id: str, key: str) -> datetime:
    return datetime.fromisoformat(str((appliance.get_task(task_id) or {})[key]))


def test_countdown_and_eta_tasks_start_no_earlier_than_asked(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    start_worker(api_env, "-c", "2")
    submitted_at = datetime.now(UTC)
    by_countdown = appliance.submit("demo.add", args=[1, 2], countdown=3)
    eta = datetime.now(UTC) + timedelta(seconds=4)
    by_eta = api.submit("demo.add", args=[2, 2], eta=eta)
    assert api.wait(by_countdown, 60) == 3
    assert api.wait(by_eta, 60) == 4
    assert _stamp(by_countdown, "started_at") >= submitted_at + timedelta(seconds=3)
    assert _stamp(by_eta, "started_at") >= eta


def test_an_eta_beyond_the_visibility_timeout_is_refused_and_nothing_is_queued(
    api_env: dict[str, str], clean_redis: RedisServer
) -> None:
    """With the default 3600 s visibility timeout and 360 s hard limit, a task may be
    delayed less than 3240 s; `appliance submit` refuses more with exit 2, one line."""
    far = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    for option in (["--eta", far], ["--countdown", "3300"]):
        refused = run_cli(api_env, "submit", "demo.add", "--args", "[1, 2]", *option)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "APPLIANCE_VISIBILITY_TIMEOUT" in lines[0]
        assert "again and again" in lines[0] and "Traceback" not in refused.stderr
    with pytest.raises(SubmitOptionError):
        api.submit("demo.add", args=[1, 2], countdown=3300)
    assert clean_redis.client().llen("default") == 0
    assert store.list_records(get_settings().effective_database_url) == []

    # An operator who raised the timeout may schedule that far ahead.
    raised = dict(api_env, APPLIANCE_VISIBILITY_TIMEOUT="14400")
    accepted = run_cli(raised, "submit", "demo.add", "--args", "[1, 2]", "--eta", far)
    assert accepted.returncode == 0, accepted.stderr
    assert clean_redis.client().llen("default") == 1
    record = appliance.get_task(accepted.stdout.strip())
    assert record is not None and record["status"] == "PENDING"
