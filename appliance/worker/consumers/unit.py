"""What the consumers' parent tells systemd for the whole unit.

READY once every consumer consumes; WATCHDOG only while every consumer is healthy (in a
task within its hard limit, or reporting that its event loop turns, see
:meth:`~appliance.worker.consumers.children.ConsumerProcess.healthy`) and none is
missing; STATUS every heartbeat interval; STOPPING with the time a drain may take.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from appliance.core import constants as C
from appliance.worker.consumers.children import ConsumerProcess

logger = logging.getLogger("appliance.consumers")


def running_indexes(consumers: Collection[ConsumerProcess]) -> int:
    """Consumers, counting a retiring one and its successor once."""
    return len({c.index for c in consumers})


@dataclass
class UnitNotifier:
    """Systemd notices of a unit of *count* consumers through *notifier* (an
    appliance.worker.sdnotify.Notifier), the watchdog fed every *watchdog* seconds."""

    notifier: Any
    watchdog: float | None
    count: int
    told_ready: bool = False
    _next_watchdog: float = 0.0
    _next_status: float = 0.0

    def supervise(
        self, consumers: Collection[ConsumerProcess], status: Callable[[], str], now: float
    ) -> None:
        """READY, WATCHDOG and STATUS as they fall due; *status* makes the STATUS line."""
        if not self.told_ready and consumers and all(c.ready for c in consumers):
            self.told_ready = True
            self.notifier.ready(status())
            logger.info("%d consumer(s) consuming", len(consumers))
        if self.watchdog and self.told_ready and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog
            stuck = [c for c in consumers if not c.healthy(now)]
            missing = self.count - running_indexes(consumers)
            if not stuck and not missing:
                self.notifier.watchdog()
            else:
                logger.warning(
                    "watchdog ping withheld: %s",
                    ", ".join(
                        [f"consumer {c.index} (pid {c.pid}) not progressing" for c in stuck]
                        + ([f"{missing} consumer(s) not running"] if missing else [])
                    ),
                )
        if now >= self._next_status:
            self._next_status = now + C.HEARTBEAT_INTERVAL
            self.notifier.status(status())

    def stopping(self, running: int, stop_timeout: float) -> None:
        extend = int(stop_timeout * 1_000_000) if stop_timeout else None
        self.notifier.stopping(f"draining {running} running task(s)", extend_usec=extend)
