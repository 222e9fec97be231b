"""STARTED record writes deferred until a task has run a while (one write for a short task)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any


class DeferredStarted:
    """The STARTED writes of running tasks, made only once a task has run for *delay* s.

    A task that ends sooner gets one record write, its final state carrying the STARTED
    fields (started_at, worker, retries) with it, instead of two. A task that runs longer
    shows STARTED as before, written by a daemon thread of this process. `take` hands a
    task's STARTED fields to its final write, or waits while the thread is writing them so
    the final state always lands last. One instance per process (a pool child's thread is
    started after the fork, on its first task).
    """

    def __init__(self, delay: float, write: Callable[[str, dict[str, Any]], None]) -> None:
        self.delay = delay
        self._write = write  # (url, the keyword arguments of store.record_started)
        self._cond = threading.Condition()
        self._due: dict[str, tuple[float, str, dict[str, Any]]] = {}
        self._writing: str | None = None
        self._owner: int | None = None  # pid whose thread runs

    def add(self, task_id: str, url: str, fields: dict[str, Any]) -> None:
        if self.delay <= 0:
            self._write(url, fields)
            return
        with self._cond:
            if self._owner != os.getpid():
                self._due.clear()  # inherited from a parent across fork: not ours to write
                self._writing = None
                self._owner = os.getpid()
                threading.Thread(target=self._run, name="records-started", daemon=True).start()
            # No notify: the thread looks every *delay* seconds (waking it for every task
            # cost a thread switch per task).
            self._due[task_id] = (time.monotonic() + self.delay, url, fields)

    def take(self, task_id: str) -> dict[str, Any] | None:
        """The STARTED fields of *task_id* if not written yet (they are then never written
        apart); None once written."""
        with self._cond:
            while self._writing == task_id:
                self._cond.wait()
            entry = self._due.pop(task_id, None)
        return entry[2] if entry else None

    def _run(self) -> None:
        """Every *delay* s, write the STARTED of each task running for *delay* s or more (so
        a task shows STARTED between *delay* and twice *delay* after it started)."""
        while True:
            time.sleep(self.delay)
            while True:
                now = time.monotonic()
                with self._cond:
                    due = [tid for tid, entry in self._due.items() if entry[0] <= now]
                    if not due:
                        break
                    _, url, fields = self._due.pop(due[0])
                    self._writing = due[0]
                try:
                    self._write(url, fields)
                finally:
                    with self._cond:
                        self._writing = None
                        self._cond.notify_all()
