"""Integration fixtures: a real Redis, real SQLite/PostgreSQL, real worker processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.config.settings import get_settings
from tests.helpers.postgres import session_postgres
from tests.helpers.processes import ApplianceProcess
from tests.helpers.redis_server import RedisServer, local_redis_server, session_redis

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with session_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with session_postgres() as url:
        yield url


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[RedisServer]:
    """A second redis-server, outside every fault under test: the probe task's execution
    tally (APPLIANCE_TEST_LEDGER_URL) for counting duplicates."""
    with local_redis_server(tmp_path / "ledger") as (server, _proc):
        yield server


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> RedisServer:
    """The session Redis with the broker and result databases emptied."""
    redis_server.flush()
    return redis_server


@pytest.fixture
def appliance_env(
    monkeypatch: pytest.MonkeyPatch, clean_redis: RedisServer, tmp_path: Path
) -> dict[str, str]:
    """Settings pointing at the test Redis and a fresh SQLite file, in os.environ too."""
    monkeypatch.setenv("APPLIANCE_BROKER_URL", clean_redis.broker_url)
    monkeypatch.setenv("APPLIANCE_RESULT_BACKEND", clean_redis.backend_url)
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", f"sqlite:///{tmp_path / 'records.db'}")
    # The whole suite on the other worker topology, by hand: APPLIANCE_TEST_TOPOLOGY=prefork.
    if os.environ.get("APPLIANCE_TEST_TOPOLOGY"):
        monkeypatch.setenv("APPLIANCE_WORKER_TOPOLOGY", os.environ["APPLIANCE_TEST_TOPOLOGY"])
    get_settings.cache_clear()
    return dict(os.environ)


@pytest.fixture(scope="session")
def _app_on_session_redis(redis_server: RedisServer) -> None:
    """Point the in-process Celery app at the session Redis (it configures only once)."""
    from appliance.celery_app import app
    from appliance.config.profile import celery_config
    from appliance.config.settings import load_settings

    settings = load_settings(
        broker_url=redis_server.broker_url, result_backend=redis_server.backend_url
    )
    app.conf.update(celery_config(settings))


@pytest.fixture
def api_env(appliance_env: dict[str, str], _app_on_session_redis: None) -> dict[str, str]:
    """For tests that call the Python API in this process."""
    from appliance.records import schema

    schema.upgrade(get_settings().effective_database_url)
    return appliance_env


WorkerFactory = Callable[..., ApplianceProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start real `appliance worker` processes; every one is stopped at teardown."""
    started: list[ApplianceProcess] = []

    def start(env: dict[str, str], *args: str, name: str = "worker") -> ApplianceProcess:
        proc = ApplianceProcess(["worker", *args], env, tmp_path / f"{name}-{len(started)}.log")
        started.append(proc)
        proc.wait_for_output(" ready.", timeout=60)
        return proc

    yield start
    for proc in started:
        proc.terminate(timeout=60)
