"""Demo tasks mirroring the seed guides; also used by tests and benchmarks."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import Any

from appliance.celery_app import app
from appliance.progress import report

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


@app.task(name="demo.noop")
def noop() -> None:
    """Do nothing (benchmarks)."""
