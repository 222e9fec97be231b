"""The consumers' parent before it forks: its own log lines, and the modules every consumer
imports, imported once here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging

# What a consumer imports on its way to consuming, imported once here before the forks:
# each consumer would otherwise spend about 0.15 s of CPU importing them (celery's
# command line alone pulls in click-repl, prompt_toolkit and pygments), at every recycle.
_WORKER_MODULES = (
    "celery.bin.celery",
    "celery.bin.worker",
    "celery.apps.worker",
    "celery.worker.worker",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.consumer.connection",
    "celery.worker.consumer.control",
    "celery.worker.consumer.tasks",
    "celery.worker.strategy",
    "celery.worker.loops",
    "celery.worker.pidbox",
    "celery.worker.control",
    "celery.concurrency.solo",
    "celery.app.trace",
    "celery.app.control",
    "celery.app.log",
    "celery.events",
    "celery.worker.autoscale",
    "celery.worker.consumer.delayed_delivery",
    "multiprocessing.sharedctypes",
    "kombu.transport.redis",
    "kombu.asynchronous",
    "appliance.broker.transport",
    "appliance.worker.consumer",
    "appliance.worker.consumers.pool",
    "appliance.worker.consumers.settle",
    "appliance.broker.result_backend",
)


def preload_worker_modules() -> None:
    for name in _WORKER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _parent_loggers() -> list[logging.Logger]:
    # The parent's own lines, and those of the journal flushes, checks and lost-task
    # policy it runs.
    return [
        logging.getLogger("appliance.consumers"),
        logging.getLogger("appliance.records"),
        logging.getLogger("appliance.recycling"),
        logging.getLogger("appliance.worker_lost"),
    ]


def log_to_stderr(level: str) -> None:
    """The parent's own log lines (Celery configures logging in each consumer only)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/Supervisor] %(message)s"))
    for log in _parent_loggers():
        log.addHandler(handler)
        log.setLevel(level.upper())
        log.propagate = False


def hand_logging_to_celery() -> None:
    """In a consumer, right after its fork: Celery sets up the consumer's own logging."""
    for log in _parent_loggers():
        log.handlers.clear()
        log.propagate = True
        log.setLevel(logging.NOTSET)
