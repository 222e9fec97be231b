"""The consumers' parent's record of each consumer process: what it runs and holds, its health.

Kept from the consumer's reports (:mod:`appliance.worker.consumers.protocol`) and from what
the parent did to it (killed it, holds it at its gate).
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

from billiard.common import human_status

from appliance.worker.consumers.protocol import KilledFor

# A consumer in no task is called stuck when it has not reported for this long (it
# reports every CONSUMER_PING_SECONDS); one in a task, this long past its hard limit.
CONSUMER_SILENT_SECONDS = 15.0
# A consumer may take this long from fork to consuming before it counts as stuck.
CONSUMER_START_SECONDS = 60.0


@dataclass
class Running:
    """The task a consumer reported starting: its message's tag and its hard limit."""

    tag: str
    hard_limit: float
    task_id: str
    name: str
    since: float


@dataclass
class ConsumerProcess:
    index: int
    pid: int
    fd: int
    forked_at: float
    buffer: bytes = b""
    ready: bool = False
    last_report: float = 0.0
    running: Running | None = None
    held: str | None = None  # a message its ack fetched, not yet started
    killed_for: KilledFor | None = None
    done: int = 0
    retiring: bool = False  # its successor is forked already
    gate: int | None = None  # a successor held at its gate: the pipe's write end

    def healthy(self, now: float) -> bool:
        """In a task within its hard limit, waiting at its gate, starting within
        CONSUMER_START_SECONDS, or reporting."""
        if self.gate is not None:
            return True  # waiting for its predecessor, on purpose
        if self.running is not None:
            limit = self.running.hard_limit
            return not limit or now - self.running.since <= limit + CONSUMER_SILENT_SECONDS
        if not self.ready:
            return now - self.forked_at <= CONSUMER_START_SECONDS
        return now - self.last_report <= CONSUMER_SILENT_SECONDS

    def open_gate(self) -> None:
        """Let a successor held at its gate pass: closing the pipe's write end is the
        signal (its read returns at EOF); also what a gone successor's pipe needs."""
        if self.gate is not None:
            with contextlib.suppress(OSError):
                os.close(self.gate)
            self.gate = None

    def kill(self, why: KilledFor) -> None:
        self.killed_for = why
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def exit_status(status: int) -> str:
    """A wait status as billiard words a child's end: 'signal 9 (SIGKILL)', 'exitcode 3'."""
    return str(human_status(os.waitstatus_to_exitcode(status)))
