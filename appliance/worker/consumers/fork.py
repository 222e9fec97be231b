"""Forking one consumer process: its report pipe, its gate, and what it drops of the parent.

The child runs what the parent gives it (``run_consumer`` of
:func:`appliance.worker.launch.run_consumers`, which makes it a consumer first) and ends
with ``os._exit``: nothing of the parent's own exit path runs in a consumer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable, Iterable

from appliance.worker.consumers.children import ConsumerProcess
from appliance.worker.consumers.parent import hand_logging_to_celery

logger = logging.getLogger("appliance.consumers")

# What the parent handles itself; a consumer gets the defaults back.
PARENT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD)

# (index, report fd, gate fd or -1) -> exit code, in the child
RunConsumer = Callable[[int, int, int], int]


def fork_consumer(
    index: int,
    run_consumer: RunConsumer,
    *,
    gated: bool,
    selector: selectors.BaseSelector,
    parents: Iterable[int | None],
) -> ConsumerProcess:
    """Fork consumer *index*, held at a gate when *gated* (a successor forked ahead). The
    child closes *selector* and the parent's descriptors *parents* (None: none)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC) if gated else (-1, None)
    pid = os.fork()
    if pid == 0:  # the consumer
        code = 1
        try:
            _in_child(selector, [read_fd, gate_w, *parents])
            code = run_consumer(index, write_fd, gate_r)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            logger.exception("consumer %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    if gate_w is not None:
        os.close(gate_r)
    os.set_blocking(read_fd, False)
    return ConsumerProcess(index, pid, read_fd, time.monotonic(), gate=gate_w)


def _in_child(selector: selectors.BaseSelector, parents: list[int | None]) -> None:
    signal.set_wakeup_fd(-1)
    hand_logging_to_celery()
    for signum in PARENT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    parent = os.getppid()
    with contextlib.suppress(Exception):
        from billiard.util import set_pdeathsig

        set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    selector.close()
    for fd in parents:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
