"""What this process is in the consumers topology: one object, set once after the fork.

A consumer process runs its tasks inline, in the thread and event loop that fetched them,
and several modules behave differently there: the broker transport delivers what an ack
fetched from the loop's next turn and lets the ack carry the task's final result and
record; the result backend and the record hooks hand those to the ack instead of writing
them; the supervision step reports to the parent instead of systemd; the pool reports each
task and retires. Each of them reads :func:`current`. A consumer sets it once, first thing
after its fork (:func:`become_consumer`, called by ``run_consumers`` in
:mod:`appliance.worker.launch`); every other process (a prefork worker, the consumers'
parent, a producer, the CLI) sees the default, not a consumer.

Stdlib only at import time: the transport, the result backend and the record hooks
import it without an import cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.worker.consumers.protocol import ParentLink
    from appliance.worker.supervision import Supervision

logger = logging.getLogger("appliance.consumer")


@dataclass(frozen=True)
class ConsumerLimits:
    """When a consumer retires: after this many tasks, above this unique memory (KiB);
    None or 0 for never."""

    max_tasks: int | None = None
    max_memory_kib: int | None = None


@dataclass
class Carried:
    """What a consumer's running task hands to its ack: its final result, its final record
    write, and how to write each without the ack (their own retrying writers)."""

    result: tuple[bytes | str, bytes | str, int] | None = None  # key, value, expiry (s)
    store_result: Callable[[], None] | None = None
    record: str | None = None  # the journal entry (appliance/records/journal.py)
    write_record: Callable[[], None] | None = None

    def write_record_now(self) -> None:
        write, self.record, self.write_record = self.write_record, None, None
        if write is not None:
            write()

    def write_now(self) -> None:
        store, self.result, self.store_result = self.store_result, None, None
        if store is not None:
            store()
        self.write_record_now()


@dataclass
class TaskAck:
    """What a consumer's running task and the transport's ack share; changes every task."""

    task_id: str | None = None  # the running task, whose final writes its ack may carry
    carried: Carried = field(default_factory=Carried)
    # The message the running task's ack fetched (the parent hears of it with ENDED).
    fetched_tag: str | None = None
    # False once the consumer retires: its last ack takes no next message.
    fetch_on_ack: bool = True
    # Acks that could not be made (Redis refused or was gone), made before the next one.
    owed: list[str] = field(default_factory=list)

    def take_carried(self) -> Carried:
        carried, self.carried = self.carried, Carried()
        return carried


@dataclass(frozen=True)
class ConsumerProcessState:
    """This process in the consumers topology; the defaults describe any other process."""

    is_consumer: bool = False
    link: ParentLink | None = None  # the reports' pipe to the parent
    limits: ConsumerLimits = field(default_factory=ConsumerLimits)
    # The result backend is a database of the broker's own Redis server: (result db,
    # broker db). A task's final result then rides in its ack's script (one round trip
    # instead of two); every path that does not end in that script stores it itself.
    results_with_ack: tuple[int, int] | None = None
    # Its unit's record journal: a task's final record write rides in its ack.
    records_journal: str | None = None
    # How many consumers its unit runs: each keeps 1/N of a task's rate limit.
    consumers: int = 1
    # Its supervision step's: the parent's captured one, reporting to the parent.
    supervision: Supervision | None = None
    ack: TaskAck = field(default_factory=TaskAck)

    def task_begins(self, task_id: str) -> None:
        self.ack.task_id = task_id

    def task_ends(self) -> None:
        """The task's delivery is over: write whatever no ack carried (its ack came first,
        as without acks late, or never came)."""
        self.ack.task_id = None
        try:
            self.ack.take_carried().write_now()
        except Exception as exc:  # the backend's retries are spent: as a failed store in trace
            logger.error("task result not stored: %r", exc)

    def stash_result(
        self,
        task_id: str,
        key: bytes | str,
        value: bytes | str,
        ttl: int,
        store: Callable[[], None],
    ) -> bool:
        """Keep the running task's final result for its ack; False: store it now yourself."""
        if self.results_with_ack is None or task_id != self.ack.task_id:
            return False
        carried = self.ack.carried
        if carried.store_result is not None:
            carried.store_result()  # an earlier final state goes first
        carried.result, carried.store_result = (key, value, ttl), store
        return True

    def stash_record(self, task_id: str, entry: str, write: Callable[[], None]) -> bool:
        """Keep the running task's final record write for its ack; False: write it now."""
        if self.records_journal is None or task_id != self.ack.task_id:
            return False
        carried = self.ack.carried
        carried.write_record_now()  # an earlier one goes first
        carried.record, carried.write_record = entry, write
        return True


_state = ConsumerProcessState()


def current() -> ConsumerProcessState:
    """This process's state: a consumer's, once :func:`become_consumer` ran, else the default."""
    return _state


def become_consumer(state: ConsumerProcessState) -> None:
    """Make this process the consumer *state* describes: once, right after its fork."""
    global _state
    _state = state
