"""A consumer's remote-control mailbox, answered from a thread of its own.

A consumer runs its task inline, in its event loop's thread (:mod:`.pool`); Celery's
mailbox (celery.worker.pidbox.Pidbox) listens in that loop, so a busy consumer answered no
``celery inspect`` / ``control`` broadcast until its task ended: "No nodes replied". Here
the node's pidbox queue is consumed by a thread with its own broker connection (Celery's
gPidbox's way, which Celery uses only for green pools), and each command goes to Celery's
own handler (celery.worker.control.Panel) with what a real thread needs:

- the inspect commands read worker_state's sets, which the loop's thread changes: a copy
  that meets a change (RuntimeError) is taken again, and each reply is copied (a JSON
  round trip) before it is sent;
- what changes the consumer's state runs on its event loop: add_consumer and
  cancel_consumer (Celery's own ``consumer.call_soon``) and rate_limit's bucket reset
  (:class:`LoopConsumer`). kombu's ``Hub.call_soon`` wakes the loop from another thread.
  They answer at once and take effect when the loop turns: at once in an idle consumer,
  after its task in a busy one. A rate limit is set to the consumer's 1/N share
  (:func:`rate_limit`). time_limit sets two task attributes (the next task's);
- revoke: :func:`revoke` (a task that another consumer runs is not marked REVOKED);
  with terminate, the parent kills the consumer (appliance.worker.lost.Request.terminate);
- shutdown stops the whole unit: SIGTERM to the parent, which drains every consumer (each
  finishes its task), as a prefork worker stops with all its children;
- pool_grow, pool_shrink and autoscale answer an error (:mod:`appliance.worker.remote_control`).

Nothing of it costs anything per task: the thread waits on its own connection's
subscription and wakes only for a command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from billiard.common import TERM_SIGNAME
from celery import states
from celery.platforms import signals as celery_signals
from celery.utils.functional import maybe_list
from celery.worker import control as celery_control
from celery.worker import state as worker_state
from celery.worker.control import ok
from celery.worker.pidbox import Pidbox
from kombu.utils import json as kombu_json

from appliance.core.text import one_line
from appliance.worker.consumers import process as consumer_process

logger = logging.getLogger("appliance.consumer")

Handler = Callable[..., Any]

# A command whose copy of the worker state met a change made by the loop's thread is run
# again, at most this many times.
COMMAND_TRIES = 5
# The thread's wait for a command; also how soon it notices that it should stop.
DRAIN_SECONDS = 1.0
# Pauses between reconnects of the mailbox's connection: growing, up to the last.
RECONNECT_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
# States Celery's revoke overwrites with REVOKED (celery.worker.control._revoke).
_UNSTARTED = (states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED)


class LoopConsumer:
    """The consumer as commands answered in the mailbox thread see it: what would change
    the loop's state from that thread is handed to the loop."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def reset_rate_limits(self) -> None:
        self._consumer.call_soon(self._consumer.reset_rate_limits)


def in_thread(name: str, fun: Handler) -> Handler:
    """*fun* (a Panel handler) as the mailbox thread runs it."""

    def run(state: Any, **kwargs: Any) -> Any:
        for attempt in range(COMMAND_TRIES):
            try:
                return _copied(fun(state, **kwargs))
            except RuntimeError:  # a set or dict changed size while it was read
                if attempt == COMMAND_TRIES - 1:
                    raise
            except SystemExit:  # a command that stops the worker (WorkerShutdown)
                stop_unit(f"{name} stops the worker")
                return None
        return None  # not reached

    run.__name__ = name
    return run


def _copied(reply: Any) -> Any:
    """*reply* detached from the live worker state it may hold (stats' task counts)."""
    try:
        return kombu_json.loads(kombu_json.dumps(reply))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return reply  # not JSON: kombu's reply fails on it the same way


def stop_unit(why: str) -> None:
    """Stop this consumer's unit as SIGTERM to the worker does: the parent drains every
    consumer (each ends its task) and exits 0."""
    logger.warning("%s: stopping the whole unit (SIGTERM to its parent)", why)
    os.kill(os.getppid(), signal.SIGTERM)


def shutdown(state: Any, msg: str = "Got shutdown from remote", **kwargs: Any) -> Any:
    """Celery's shutdown, for a consumer node: the unit it belongs to stops."""
    stop_unit(msg)
    return ok("the unit stops: each consumer ends its task, then exits")


def revoke(
    state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any
) -> Any:
    """Celery's revoke (celery.worker.control.revoke), for a consumer.

    Celery marks a task REVOKED in the result backend unless the node runs it or the
    backend says it started. A running task's result stays PENDING here (no STARTED in
    the backend: task_track_started is off while the records keep it), and a consumer
    knows only its own requests: every idle consumer marked a task that its sibling runs
    REVOKED, the caller saw TaskRevokedError, and the task's SUCCESS overwrote it later.
    So a consumer marks only a request it holds and that is not claimed
    (appliance.worker.lost.Request.revoked; it cannot start any more once its id is in
    the revoked set). A task nobody here holds is marked by the consumer that takes its
    message: Celery discards a revoked id there (REVOKED result, record, ack).
    """
    ids = set(maybe_list(task_id) or [])
    worker_state.revoked.update(ids)  # first: an unclaimed request can no longer start
    held = {i: r for i in sorted(ids) if (r := worker_state.requests.get(i)) is not None}
    for request in held.values():
        if not getattr(request, "claimed", False):
            _mark_revoked(request)
    if not terminate:
        logger.info("Tasks flagged as revoked: %s", ", ".join(ids))
        return ok(f"tasks {ids} flagged as revoked")
    signum = celery_signals.signum(signal or TERM_SIGNAME)
    terminated = []
    for request in held.values():
        logger.info("Terminating %s (%s)", request.id, signum)
        try:
            request.terminate(state.consumer.pool, signal=signum)
        except Exception as exc:  # the terminate request could not be written
            logger.error("terminate of %s not requested: %s", request.id, one_line(exc))
            return {"error": f"terminate of {request.id} not requested: {one_line(exc)}"}
        terminated.append(request.id)
    if not terminated:
        return ok("terminate: tasks unknown")
    return ok("terminate: {}".format(", ".join(terminated)))


def rate_limit(state: Any, task_name: Any, rate_limit: Any, **kwargs: Any) -> Any:
    """Celery's rate_limit, for a consumer: it keeps its 1/N share of the rate, as at its
    start (pool.share_rate_limits), so that the unit keeps the rate named."""
    from appliance.worker.consumers.pool import shared_rate

    share = shared_rate(rate_limit, consumer_process.current().consumers)
    return celery_control.rate_limit(state, task_name, share, **kwargs)


def terminate(state: Any, signal: Any, task_id: Any, **kwargs: Any) -> Any:
    """Celery's terminate command (revoke with terminate), through :func:`revoke`."""
    return revoke(state, task_id, terminate=True, signal=signal)


def _mark_revoked(request: Any) -> None:
    """REVOKED in the backend, where Celery's revoke would mark it (an unstarted state)."""
    backend = request.task.backend
    try:
        if backend.get_state(request.id) in _UNSTARTED:
            backend.mark_as_revoked(request.id, reason="revoked", store_result=True)
    except Exception as exc:
        logger.warning("Failed to mark task %s as revoked in backend: %s", request.id, exc)


# The commands a consumer answers differently from Celery (pool ones: remote_control).
COMMANDS: dict[str, Handler] = {
    "revoke": revoke,
    "terminate": terminate,
    "rate_limit": rate_limit,
    "shutdown": shutdown,
}


class ThreadedMailbox(Pidbox):  # type: ignore[misc]
    """The node's mailbox (Celery's Pidbox: its Node and on_message), consumed by a
    daemon thread on its own connection from the step's start until the shutdown.

    It keeps answering while the consumer's own connection is restarted (Celery stops
    and starts the step then): it has its own, and it reconnects that one itself. A
    successor started ahead of a retirement answers only once past its gate, so a node
    name never has two mailboxes for long.
    """

    def __init__(self, c: Any, handlers: dict[str, Handler]) -> None:
        super().__init__(c)
        self.node.handlers = handlers
        state = self.node.state
        state.consumer = LoopConsumer(c)
        state.tset = set  # a copy (Celery's event loop mailbox reads the live WeakSets)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset = False
        self._failures = 0  # connections failed in a row

    def start(self, c: Any) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="mailbox", daemon=True)
        self._thread.start()

    def stop(self, c: Any) -> None:
        """The consumer's connection restarts: the mailbox has its own, and goes on."""

    def shutdown(self, c: Any) -> None:
        self._stopping.set()  # the thread ends within DRAIN_SECONDS (a daemon: never waited)

    def reset(self) -> None:
        """Pidbox.on_message's answer to a failed command: a new channel (in the thread)."""
        self._reset = True

    def _run(self) -> None:
        link = consumer_process.current().link
        while link is not None and not link.passed.wait(DRAIN_SECONDS):
            if self._stopping.is_set():
                return
        while not self._stopping.is_set():
            try:
                self._serve()
            except Exception as exc:  # the broker connection failed or was lost
                self._failures += 1
                if self._failures == 1:
                    logger.warning("mailbox: %s; reconnecting", one_line(exc))
                pause = RECONNECT_SECONDS[min(self._failures, len(RECONNECT_SECONDS)) - 1]
                self._stopping.wait(pause)

    def _serve(self) -> None:
        """Listen until told to stop; raise what the connection raises."""
        with self.c.app.connection_for_read() as connection:
            while not self._stopping.is_set():
                self._reset = False
                self.node.channel = connection.channel()
                consumer = self.node.listen(callback=self.on_message)
                if self._failures:
                    self._failures = 0
                    logger.info("mailbox: connected again")
                try:
                    while not (self._stopping.is_set() or self._reset):
                        with contextlib.suppress(TimeoutError):  # socket.timeout
                            connection.drain_events(timeout=DRAIN_SECONDS)
                finally:
                    _close_quietly(consumer.cancel)
                    _close_quietly(self.node.channel.close)


def _close_quietly(close: Callable[[], Any]) -> None:
    try:
        close()
    except Exception as exc:
        logger.debug("mailbox: close failed: %s", exc)
