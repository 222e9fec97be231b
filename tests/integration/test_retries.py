"""Retry policies as the records show them: while a task waits to be retried its record
says RETRY, with the number of retries so far and the error that caused the last one.
"""

from __future__ import annotations

import appliance
from appliance import api
from appliance.tasks import demo
from tests.helpers.processes import wait_until
from tests.integration.conftest import WorkerFactory


def test_manual_retry_shows_each_retry_and_its_error_in_the_record(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """Given demo.retry_manual failing twice with self.retry(countdown=2), when it runs,
    then its record reads RETRY 1 and RETRY 2 with each attempt's error, then SUCCESS."""
    start_worker(api_env, "-c", "1")
    task_id = appliance.submit("demo.retry_manual", kwargs={"fail_times": 2, "countdown": 2})
    seen: set[tuple[str, int, str | None]] = set()

    def finished() -> bool:
        record = appliance.get_task(task_id) or {}
        if record:
            seen.add((record["status"], record["retries"], record["error"]))
        return record.get("status") == "SUCCESS"

    wait_until(finished, 90, "demo.retry_manual to succeed")
    for retries in (1, 2):
        error = f"Retry in 2s: ConnectionError('simulated outage on attempt {retries} of 3')"
        assert any(
            status == "RETRY" and count == retries and error in (text or "")
            for status, count, text in seen
        ), seen
    assert api.wait(task_id, 30) == {"attempts": 3}
    record = appliance.get_task(task_id)
    assert record is not None and (record["status"], record["retries"]) == ("SUCCESS", 2)


def test_autoretry_with_backoff_counts_its_retries_in_the_record(
    api_env: dict[str, str], start_worker: WorkerFactory
) -> None:
    """demo.flaky: autoretry_for=ConnectionError, retry_backoff=1, retry_backoff_max=30,
    retry_jitter (a random countdown up to 1, 2, 4... s), at most 5 retries."""
    assert (demo.flaky.retry_backoff, demo.flaky.retry_backoff_max) == (1, 30)
    assert demo.flaky.retry_jitter is True and demo.flaky.max_retries == 5
    worker = start_worker(api_env, "-c", "1")
    task_id = appliance.submit("demo.flaky", kwargs={"fail_times": 3})
    assert api.wait(task_id, 120) == {"attempts": 4}
    record = appliance.get_task(task_id)
    assert record is not None and (record["status"], record["retries"]) == ("SUCCESS", 3)
    assert worker.output().count(f"demo.flaky[{task_id}] retry: Retry in") == 3

    doomed = appliance.submit("demo.flaky", kwargs={"fail_times": 9})
    wait_until(
        lambda: (appliance.get_task(doomed) or {}).get("status") == "FAILURE",
        300,
        "demo.flaky to give up after 5 retries",
    )
    record = appliance.get_task(doomed)
    assert record is not None and record["retries"] == 5
    assert "simulated outage on attempt 6 of 10" in str(record["error"])
