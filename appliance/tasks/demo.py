"""Demo tasks: an example of each Celery feature the appliance supports; also used by the
tests and benchmarks."""

from __future__ import annotations

import operator
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import chord
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

from appliance.celery_app import app
from appliance.idempotency import idempotent
from appliance.progress import report

logger = get_task_logger(__name__)

_OPERATIONS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "multiply": operator.mul,
    "subtract": operator.sub,
}


@app.task(name="demo.add")
def add(x: Any, y: Any) -> Any:
    """Return x + y."""
    return x + y


@app.task(name="demo.sum")
def total(values: list[Any]) -> Any:
    """Return the sum of *values* (a chord callback)."""
    return sum(values)


@app.task(name="demo.calculate")
def calculate(a: Any, b: Any, operation: str = "add") -> Any:
    """Apply add/multiply/subtract; an unknown operation fails at once (never retried)."""
    try:
        func = _OPERATIONS[operation]
    except KeyError:
        raise ValueError(
            f"unknown operation {operation!r}; use one of {', '.join(_OPERATIONS)}"
        ) from None
    return func(a, b)


@app.task(name="demo.progress", bind=True)
def progress(self: Any, steps: int = 10, delay: float = 0.5) -> dict[str, int]:
    """A long-running task that reports its progress after each step."""
    for step in range(1, steps + 1):
        time.sleep(delay)
        report(self, step, steps, f"step {step} of {steps}")
    return {"steps": steps}


@app.task(
    name="demo.flaky",
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=5,
)
def flaky(self: Any, fail_times: int = 2) -> dict[str, int]:
    """Raise ConnectionError on the first *fail_times* attempts, then succeed.

    The attempt counter is the message's own retry count, so it survives retries
    and redelivery to another worker.
    """
    attempt = self.request.retries or 0
    if attempt < fail_times:
        raise ConnectionError(f"simulated outage on attempt {attempt + 1} of {fail_times + 1}")
    return {"attempts": attempt + 1}


@app.task(name="demo.sleep")
def sleep(seconds: float = 1.0) -> float:
    """Sleep, then return the seconds slept."""
    time.sleep(seconds)
    return seconds


@app.task(name="demo.with_cleanup")
def with_cleanup(seconds: float = 1.0, cleanup_seconds: float = 0.0) -> float:
    """Work for *seconds*; past the soft time limit, clean up for *cleanup_seconds* and
    re-raise SoftTimeLimitExceeded, so the task still ends FAILURE. A cleanup that
    outlasts the hard limit gets the child killed: TimeLimitExceeded."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        logger.warning("soft time limit exceeded; cleaning up for %ss", cleanup_seconds)
        time.sleep(cleanup_seconds)
        raise
    return seconds


@app.task(name="demo.noop")
def noop() -> None:
    """Do nothing (benchmarks)."""


@app.task(name="demo.add_chord", bind=True)
def add_chord(self: Any, *pairs: list[Any]) -> Any:
    """Sum x + y over the [x, y] *pairs* as a chord: one demo.add per pair, demo.sum as
    its callback (``appliance submit demo.add_chord --args '[[1, 2], [3, 4]]'``).

    Built on the worker, which replaces this task with the chord (Celery's
    Task.replace): the callback runs under this task's id, so `submit --wait` prints
    the sum, and every member's record has this id as its root (and parent) id.
    """
    if not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ValueError("give one or more [x, y] pairs as arguments, e.g. [[1, 2], [3, 4]]")
    return self.replace(chord([add.s(x, y) for x, y in pairs], total.s()))


ERRBACK_WAIT_SECONDS = 10.0


@app.task(name="demo.on_error", bind=True)
def on_error(self: Any, task_id: str | None = None) -> dict[str, Any]:
    """An error callback (``link_error``): return which task failed and why.

    Celery passes the failed task's id; an immutable errback (e.g. on a chord header)
    gets none, and the failed task is then its parent.
    """
    from celery.result import AsyncResult

    failed_id = task_id or self.request.parent_id
    failed = AsyncResult(failed_id, app=app)
    # Celery publishes a chord's error callbacks before it stores the ChordError: this
    # may run first. Wait (bounded) for the failure it reports to be stored.
    deadline = time.monotonic() + ERRBACK_WAIT_SECONDS
    while failed.state == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.05)
    exc = failed.result
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    name = None
    try:
        from appliance.api import get_task

        name = (get_task(failed_id) or {}).get("name")
    except Exception:  # the records are a nicety here, not a requirement
        pass
    logger.warning("error callback: task %s (%s) failed: %s", failed_id, name, error)
    return {"task_id": failed_id, "name": name, "error": error}


@app.task(name="demo.rate_limited", rate_limit="10/m")
def rate_limited(tag: Any = None) -> Any:
    """Return *tag*; each worker starts at most 10 of these a minute (rate_limit)."""
    return tag


@app.task(name="demo.retry_manual", bind=True, max_retries=5)
def retry_manual(self: Any, fail_times: int = 2, countdown: float = 1.0) -> dict[str, int]:
    """Fail the first *fail_times* attempts and retry itself (``self.retry``) after
    *countdown* seconds; the record says RETRY with the error while it waits."""
    attempt = self.request.retries or 0
    if attempt < fail_times:
        raise self.retry(
            exc=ConnectionError(f"simulated outage on attempt {attempt + 1} of {fail_times + 1}"),
            countdown=countdown,
        )
    return {"attempts": attempt + 1}


@app.task(name="demo.charge")
@idempotent(key=lambda order_id, amount: order_id)
def charge(order_id: str, amount: float) -> dict[str, Any]:
    """Charge *order_id* once, however often it is delivered or submitted (idempotent).

    A refused charge (amount not positive) releases the key, so a corrected retry runs.
    """
    if amount <= 0:
        raise ValueError(f"amount must be positive, not {amount!r}")
    logger.info("charging order %s: %s", order_id, amount)
    return {"order_id": order_id, "amount": amount, "charge_id": uuid.uuid4().hex}
