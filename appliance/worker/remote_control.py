"""The worker's remote control (``celery inspect`` / ``celery control``): Celery's Control
bootstep with the appliance's mailbox and a few commands answered differently.

- Consumers topology: the mailbox is consumed by a thread of the consumer
  (:mod:`appliance.worker.consumers.mailbox`), so a consumer running a task still answers
  within Celery's 1 s reply timeout; revoke, terminate and shutdown are the consumer's own.
- Both topologies: pool_grow, pool_shrink and autoscale answer Celery's error reply
  (``{'error': '...'}``) with the reason and the fix where they cannot work, instead of
  Celery's AttributeError or ValueError text: a consumers unit runs a fixed number of
  consumers, and no appliance worker runs an autoscaler.

The step replaces ``celery.worker.consumer.control:Control`` in the appliance's consumer
blueprint (appliance/worker/consumer.py); every other command is Celery's own handler,
looked up in celery.worker.control.Panel when it is called (commands registered later
count too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker import control as celery_control
from celery.worker.consumer.control import Control as CeleryControl
from celery.worker.control import Panel, nok

from appliance.worker.consumers import process as consumer_process

Handler = Callable[..., Any]

FIXED_CONSUMERS = (
    "the consumers topology runs a fixed number of consumers per unit; "
    "fix: change -c / APPLIANCE_CONCURRENCY and restart the worker"
)
NO_AUTOSCALE = (
    "autoscale is not enabled: an appliance worker runs -c / APPLIANCE_CONCURRENCY "
    "processes; fix: change that and restart the worker (prefork: or pool_grow / pool_shrink)"
)


def _fixed(state: Any, *args: Any, **kwargs: Any) -> Any:
    return nok(FIXED_CONSUMERS)


def autoscale(state: Any, max: Any = None, min: Any = None) -> Any:
    """Celery's autoscale where an autoscaler runs; else the reason it cannot."""
    if state.consumer.controller.autoscaler is None:
        return nok(NO_AUTOSCALE)
    return celery_control.autoscale(state, max=max, min=min)


def commands(*, consumer: bool) -> Commands:
    """The command table of a consumer process's mailbox, or of a prefork worker's."""
    if not consumer:
        return Commands({"autoscale": autoscale})
    from appliance.worker.consumers import mailbox

    pool = dict.fromkeys(("pool_grow", "pool_shrink", "autoscale"), _fixed)
    return Commands({**pool, **mailbox.COMMANDS}, wrap=mailbox.in_thread)


class Commands(dict[str, Handler]):
    """Celery's command registry (Panel.data, read at each call) with *overrides*, each
    handler passed through *wrap* (name, handler) -> handler; kombu's Node looks commands
    up here (an unknown name raises KeyError, as in Panel.data)."""

    def __init__(
        self,
        overrides: dict[str, Handler],
        wrap: Callable[[str, Handler], Handler] | None = None,
    ) -> None:
        super().__init__()
        self._overrides = overrides
        self._wrap = wrap

    def __missing__(self, name: str) -> Handler:
        fun = self._overrides.get(name) or Panel.data[name]
        return fun if self._wrap is None else self._wrap(name, fun)


class Control(CeleryControl):  # type: ignore[misc]
    """Celery's remote-control step; in a consumer process its mailbox is a thread's."""

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        if consumer_process.current().is_consumer:
            from appliance.worker.consumers.mailbox import ThreadedMailbox

            self.box = ThreadedMailbox(c, commands(consumer=True))
        else:
            self.box.node.handlers = commands(consumer=False)
        self.start = self.box.start
        self.stop = self.box.stop
        self.shutdown = self.box.shutdown
