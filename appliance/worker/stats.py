"""Task counters of a worker node, kept in its main process for heartbeats and STATUS.

Prefork children run the tasks, but every outcome comes back through the main
process: Celery's worker state counts accepted and active requests, and a Request
subclass counts failures and retries as they come back (no extra I/O per task).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Retry
from celery.worker import state as worker_state
from celery.worker.request import Request


@dataclass
class Counters:
    """Failures and retries seen by this worker process since it started."""

    failed: int = 0
    retried: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: str, error: str) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            self.last_error = error[:500]

    @property
    def active(self) -> int:
        return len(worker_state.active_requests)

    @property
    def done(self) -> int:
        """Tasks that started here and have finished, whatever their outcome."""
        return max(0, int(worker_state.all_total_count[0]) - self.active)

    @property
    def succeeded(self) -> int:
        return max(0, self.done - self.failed - self.retried)


counters = Counters()


class CountingRequest(Request):  # type: ignore[misc]
    """Celery's Request, counting failures and retries in the worker's main process.

    Celery's generated request class overrides on_success but routes every failed
    outcome (including retries and lost children) through on_failure.
    """

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):  # as a pool child sends it back
            exc = exc.exc
        name = type(exc).__name__
        counters.count("retried" if isinstance(exc, Retry) else "failed", f"{name}: {exc}")
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )
