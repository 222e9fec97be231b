"""Tasks only the tests load (APPLIANCE_TASK_MODULES=tests.integration.probe_tasks)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import redis

from appliance.celery_app import app
from appliance.config.settings import get_settings


@app.task(name="probe.env")
def env(name: str) -> str | None:
    """The value of an environment variable inside the pool child that runs the task."""
    return os.environ.get(name)


@app.task(name="probe.needs_file")
def needs_file(path: str) -> str:
    """Fail until *path* exists (an operator fixes the cause, then retries)."""
    with open(path) as handle:
        return handle.read()


@app.task(
    name="probe.tally",
    bind=True,
    autoretry_for=(OSError, redis.ConnectionError),
    retry_backoff=0.5,
    max_retries=20,
)
def tally(self: Any, seconds: float = 0.02) -> int:
    """Count this execution in a Redis hash keyed by task id (duplicates show as > 1).

    The count itself needs Redis, so while Redis restarts the task retries. The hash lives
    on APPLIANCE_TEST_LEDGER_URL when set (a second redis-server, outside the fault under
    test), else on the broker.
    """
    time.sleep(seconds)
    return _count_execution(self.request.id)


def _count_execution(task_id: str) -> int:
    url = os.environ.get("APPLIANCE_TEST_LEDGER_URL") or get_settings().broker_url
    client = redis.Redis.from_url(url, socket_timeout=5)
    return int(client.hincrby("appliance-test:tally", task_id, 1))


@app.task(name="probe.die", bind=True)
def die(self: Any, path: str, how: str = "sigkill", once: bool = False) -> str:
    """End this pool child (how: sigkill, sys_exit, os_exit) unless *path* exists.

    Each execution is counted like probe.tally's. With *once*, *path* is created before
    dying, so the redelivery survives; without, it is a poison task until someone creates
    *path*.
    """
    _count_execution(self.request.id)
    if os.path.exists(path):
        return "survived"
    if once:
        open(path, "x").close()
    if how == "sys_exit":
        sys.exit(3)
    if how == "os_exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL did not end the pool child")


_held: list[bytearray] = []


@app.task(name="probe.hold_and_tally", bind=True)
def hold_and_tally(self: Any, mb: int, seconds: float = 0.02) -> int:
    """Keep *mb* MiB more in this pool child (memory recycling), then count like probe.tally."""
    _held.append(bytearray(b"\1") * (mb << 20))
    time.sleep(seconds)
    return _count_execution(self.request.id)
