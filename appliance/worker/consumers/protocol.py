"""What a consumer process and its supervising parent tell each other.

Up: a consumer writes one line per report to a pipe that the parent reads
(:class:`ParentLink`; a line is shorter than PIPE_BUF, so each write is atomic)::

    R                                         consuming
    W                                         its event loop turned and the broker
                                              connection progresses (every CONSUMER_PING_SECONDS)
    S <tag> <hard limit s> <task id> <name>   a task starts (tag "-": none; limit 0: none)
    E <tag or ->                              it is done and acked; the consumer now holds the
                                              message with that tag (its ack fetched it) or none
    P                                         it retires in a few tasks: fork its successor now
    X                                         it retires now: let its successor consume

:func:`encode` writes a :class:`Report` as its line, :func:`parse` reads it back.

Down: the parent uses descriptors and signals. A successor forked ahead of a retirement
waits at its gate (a pipe) after ``R`` until the parent closes the other end; SIGTERM
drains a consumer; SIGKILL ends one for a :class:`KilledFor` reason, which decides what
becomes of the message it was running. A consumer that retires exits with
:data:`appliance.worker.recycling.EX_RECYCLE`.

Stdlib only (and the notify protocol's Notifier): both ends import it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from enum import Enum

from appliance.worker.sdnotify import Notifier

# A consumer reports a turn of its event loop this often (its supervision step's timer).
CONSUMER_PING_SECONDS = 2.0
# The tag of a report without a message.
NO_TAG = "-"
# The longest line a consumer writes (bytes, without its newline); PIPE_BUF is 4096.
MAX_LINE_BYTES = 500


class Kind(Enum):
    """What a report says (its first field on the wire)."""

    READY = "R"
    PROGRESS = "W"
    STARTED = "S"
    ENDED = "E"
    RETIRING_SOON = "P"
    RETIRING = "X"


class KilledFor(Enum):
    """Why the parent killed a consumer: what becomes of the message it was running."""

    TIME_LIMIT = "time limit"  # past its task's hard limit: FAILURE, the message acked
    REVOKED = "revoked"  # its task was revoked with --terminate: REVOKED, acked
    STOP = "stop"  # still in a task at the stop timeout: the message requeued


@dataclass(frozen=True, slots=True)
class Report:
    """One report of a consumer; the fields after *kind* belong to STARTED and ENDED."""

    kind: Kind
    tag: str = NO_TAG  # STARTED: the delivery tag of the task's message
    hard_limit: float = 0.0  # STARTED: seconds, 0 for none
    task_id: str = ""  # STARTED
    name: str = ""  # STARTED: the task's name
    fetched: str | None = None  # ENDED: the message the task's ack fetched, if any


def started(tag: str, hard_limit: float, task_id: str, name: str) -> Report:
    return Report(Kind.STARTED, tag=tag, hard_limit=hard_limit, task_id=task_id, name=name)


def ended(fetched: str | None) -> Report:
    return Report(Kind.ENDED, fetched=fetched)


def encode(report: Report) -> bytes:
    """The line of *report*, newline included."""
    if report.kind is Kind.STARTED:
        line = f"S {report.tag} {report.hard_limit:g} {report.task_id} {report.name}"
    elif report.kind is Kind.ENDED:
        line = f"E {report.fetched or NO_TAG}"
    else:
        line = report.kind.value
    return line.encode()[:MAX_LINE_BYTES] + b"\n"


def parse(line: str) -> Report | None:
    """The report on *line* (without its newline); None for a line that is not one."""
    code, _, rest = line.partition(" ")
    try:
        kind = Kind(code)
    except ValueError:
        return None
    if kind is Kind.STARTED:
        fields = rest.split(" ", 3)
        if len(fields) != 4:
            return None
        tag, limit, task_id, name = fields
        try:
            hard_limit = float(limit or 0)
        except ValueError:
            return None
        return started(tag, hard_limit, task_id, name)
    if kind is Kind.ENDED:
        return ended(None if rest in ("", NO_TAG) else rest)
    return Report(kind)


class ParentLink:
    """A consumer's end: its reports' pipe and, for a successor forked ahead, its gate.

    *gate_fd* (a successor's): after reporting READY it waits there, started but not
    fetching, until the parent closes the other end.
    """

    def __init__(self, fd: int, gate_fd: int = -1) -> None:
        self._fd = fd
        self._gate_fd = gate_fd
        # Set once the consumer may consume (no gate, or past it): its mailbox thread
        # answers for the node only from then on, not beside the predecessor it replaces.
        self.passed = threading.Event()
        if gate_fd < 0:
            self.passed.set()

    def send(self, report: Report) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: PDEATHSIG ends us
            os.write(self._fd, encode(report))

    def wait_at_gate(self) -> None:
        if self._gate_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.read(self._gate_fd, 1)  # EOF: go (the parent opened it, stops or is gone)
            os.close(self._gate_fd)
        self._gate_fd = -1
        self.passed.set()


class LinkNotifier(Notifier):
    """A consumer's stand-in for :class:`appliance.worker.sdnotify.Notifier`: its supervision
    step's READY and WATCHDOG reach the parent, which speaks to systemd for the unit."""

    def __init__(self, link: ParentLink) -> None:
        super().__init__("")
        self._link = link

    @property
    def enabled(self) -> bool:
        return True

    def ready(self, status: str | None = None) -> bool:
        self._link.send(Report(Kind.READY))
        self._link.wait_at_gate()  # a successor: until its predecessor retires
        return True

    def watchdog(self) -> bool:
        self._link.send(Report(Kind.PROGRESS))
        return True

    def status(self, text: str) -> bool:
        return True

    def stopping(self, status: str | None = None, extend_usec: int | None = None) -> bool:
        return True

    def close(self) -> None:
        pass
